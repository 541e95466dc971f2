"""What every process tells its operators: Prometheus metrics (metrics.py, served per process by
exporter.py), JSON or text log lines with the study's correlation id (logs.py, correlation.py),
and the database and broker figures both the metrics and `make status` read (backlog.py)."""
