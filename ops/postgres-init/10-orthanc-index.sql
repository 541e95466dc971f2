-- Orthanc's index (MEDREGA_ORTHANC_INDEX_DATABASE=orthanc) lives beside our database on the same
-- PostgreSQL. Run by the postgres image when it initialises an empty data directory; on an
-- existing one: docker compose exec postgres createdb -U medrega -E UTF8 orthanc
CREATE DATABASE orthanc ENCODING 'UTF8';
