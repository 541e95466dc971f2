"""Fixtures for the production-mode tests: certificate authorities made by the test run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.production.pki import Pki, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A second, unrelated CA: what it signs must not be trusted."""
    return make_pki(tmp_path_factory.mktemp("other-pki"))


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    return tmp_path / "ris-inbox"
