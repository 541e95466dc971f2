"""Real Orthanc (our configuration + routing plugin) and a real DICOM receiver as the AI node.

DCMTK `storescp` stands in for the AI node in the plugin-level tests: it writes each received
instance to its own file (`--unique-filenames`), so a second delivery of the same instance shows
up as a second file and "routed exactly once" can be asserted.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest

from services.pacs.local_orthanc import RunningOrthanc, free_tcp_port, running_orthanc
from shared.config import Settings

# Orthanc's StableAge for the tests: short, but long enough that storescu's files of one
# association land in one "stable" window.
TEST_STABLE_AGE_S = 1
# StableAge plus Orthanc's once-a-second stability check plus routing, with room for a busy CI.
ROUTING_TIMEOUT_S = 20.0
TEST_CALLING_AE = "MEDREGA_TEST"


def dcmtk_environment() -> dict[str, str]:
    # Without TCP_NODELAY, DCMTK tools on loopback crawl at ~11 instances/s (Nagle).
    return {**os.environ, "TCP_NODELAY": "1"}


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.1)


def send_with_storescu(paths: list[Path], port: int, called_ae: str = "ORTHANC") -> None:
    result = subprocess.run(
        ["storescu", "-aet", TEST_CALLING_AE, "-aec", called_ae, "127.0.0.1", str(port)]
        + [str(path) for path in paths],
        env=dcmtk_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


@dataclass
class StoreScpAiNode:
    ae_title: str
    port: int
    output_dir: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, sleep_during_store_s: int = 0) -> None:
        """`sleep_during_store_s` makes a slow AI node (each C-STORE takes that long)."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                "storescp",
                "--aetitle",
                self.ae_title,
                "--output-directory",
                str(self.output_dir),
                "--unique-filenames",
                "--sleep-during",
                str(sleep_during_store_s),
                str(self.port),
            ],
            env=dcmtk_environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._accepting, 10, "storescp to listen")

    def _accepting(self) -> bool:
        result = subprocess.run(
            ["echoscu", "-aec", self.ae_title, "127.0.0.1", str(self.port)],
            env=dcmtk_environment(),
            capture_output=True,
            timeout=10,
        )
        return result.returncode == 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def received(self, study_instance_uid: str) -> list[str]:
        """SOP Instance UIDs received for one study, one entry per delivery (duplicates kept)."""
        uids = []
        for path in sorted(self.output_dir.iterdir()):
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
            if dataset.StudyInstanceUID == study_instance_uid:
                uids.append(str(dataset.SOPInstanceUID))
        return uids


# One Orthanc and one AI node per test module: Orthanc takes ~3 s to shut down cleanly, and
# every test works on its own fresh study, so sharing them costs no isolation.
@pytest.fixture(scope="module")
def storescp_ai_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreScpAiNode]:
    node = StoreScpAiNode(
        ae_title=Settings().listener_ae_title,
        port=free_tcp_port(),
        output_dir=tmp_path_factory.mktemp("ai-node"),
    )
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def orthanc_to_storescp(
    tmp_path_factory: pytest.TempPathFactory, storescp_ai_node: StoreScpAiNode
) -> Iterator[RunningOrthanc]:
    with running_orthanc(
        tmp_path_factory.mktemp("orthanc"),
        Settings(),
        listener_port=storescp_ai_node.port,
        stable_age_s=TEST_STABLE_AGE_S,
    ) as orthanc:
        yield orthanc


def orthanc_study_id(orthanc: RunningOrthanc, study_instance_uid: str) -> str:
    matches = orthanc.client.post_json(
        "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_instance_uid}}
    )
    assert len(matches) == 1, matches
    return str(matches[0])


def routing_record(orthanc: RunningOrthanc, study_id: str) -> dict[str, Any]:
    """The plugin's own account of a study (handled count, routed, skipped)."""
    status = orthanc.client.get_json("/medrega/routing")
    record: dict[str, Any] = status["studies"].get(study_id, {})
    return record


def wait_until_handled(orthanc: RunningOrthanc, study_id: str, times: int) -> dict[str, Any]:
    """Block until the plugin finished its `times`-th pass over the study (STABLE_STUDY)."""
    return dict(
        wait_until(
            lambda: (
                record
                if (record := routing_record(orthanc, study_id)).get("handled", 0) >= times
                and record.get("last_outcome") != "retry_scheduled"
                else None
            ),
            ROUTING_TIMEOUT_S,
            f"the routing plugin's pass #{times} over study {study_id}",
        )
    )
