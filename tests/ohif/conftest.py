"""OHIF 3.13 (npm's built dist) on one origin with a real Orthanc + DICOMweb, and Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.pacs.local_orthanc import RunningOrthanc, free_tcp_port, running_orthanc
from shared.config import Settings
from tests.ohif.ohif_dist import ohif_dist
from tests.ohif.one_origin import one_origin
from tests.web.test_browser import chromium

__all__ = ["chromium"]  # Debian's Chromium under Playwright, as the review UI's browser test


@pytest.fixture(scope="session")
def viewer_dist() -> Path:
    return ohif_dist()


@pytest.fixture
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningOrthanc]:
    # One per test: each test's database numbers its reports from 1, and SR UIDs derive from
    # (report id, version). The routing plugin would send the uploaded images on to an AI
    # node: a closed port here, so it only schedules retries; our SR is never routed.
    with running_orthanc(
        tmp_path_factory.mktemp("orthanc"), Settings(), listener_port=free_tcp_port()
    ) as orthanc:
        yield orthanc


@pytest.fixture
def viewer_origin(viewer_dist: Path, pacs: RunningOrthanc) -> Iterator[str]:
    settings = Settings()
    with one_origin(
        viewer_dist,
        f"http://127.0.0.1:{pacs.http_port}",
        settings.pacs_http_user,
        settings.secret("pacs_http_password"),
    ) as origin:
        yield origin
