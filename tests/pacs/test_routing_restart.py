"""A study still waiting to be routed when Orthanc stops is routed after the restart.

The plugin's retry schedule lives in memory; what survives is its checkpoint in Orthanc's change
log. After the restart it re-checks exactly the studies changed after the checkpoint.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from services.pacs.local_orthanc import free_tcp_port, running_orthanc
from shared.config import Settings
from tests.pacs.conftest import (
    ROUTING_TIMEOUT_S,
    TEST_STABLE_AGE_S,
    StoreScpAiNode,
    orthanc_study_id,
    routing_record,
    send_with_storescu,
    wait_until,
    wait_until_handled,
)
from tests.pacs.dicom_samples import new_study, write_ct_series


def test_pending_study_survives_an_orthanc_restart_and_routed_ones_are_not_resent(
    tmp_path: Path,
) -> None:
    ai_node = StoreScpAiNode(
        ae_title=Settings().listener_ae_title, port=free_tcp_port(), output_dir=tmp_path / "ai"
    )
    orthanc_options = {
        "listener_port": ai_node.port,
        "stable_age_s": TEST_STABLE_AGE_S,
        "http_port": free_tcp_port(),
        "dicom_port": free_tcp_port(),
        "checkpoint_tick_s": 0.3,
    }
    routed = new_study()
    routed_files = write_ct_series(tmp_path / "routed", routed, 3)
    pending = new_study()
    pending_files = write_ct_series(tmp_path / "pending", pending, 2)

    ai_node.start()
    try:
        with running_orthanc(tmp_path / "orthanc", Settings(), **orthanc_options) as orthanc:
            send_with_storescu([path for path, _ in routed_files], orthanc.dicom_port)
            wait_until_handled(orthanc, orthanc_study_id(orthanc, routed.study_instance_uid), 1)
            # Idle now: the checkpoint moves past the routed study's changes (incl. our marks).
            last_change = orthanc.client.get_json("/changes?last")["Last"]
            wait_until(
                lambda: (
                    (orthanc.client.get_json("/medrega/routing")["checkpoint"] or 0) >= last_change
                ),
                ROUTING_TIMEOUT_S,
                "the checkpoint to pass the routed study",
            )

            ai_node.stop()
            send_with_storescu([path for path, _ in pending_files], orthanc.dicom_port)
            pending_id = orthanc_study_id(orthanc, pending.study_instance_uid)
            wait_until(
                lambda: routing_record(orthanc, pending_id).get("failures", 0) >= 1,
                ROUTING_TIMEOUT_S,
                "a failed attempt while the AI node is down",
            )
        # Orthanc is down, with the pending study's retry only in the old process's memory.
        ai_node.start()
        with running_orthanc(tmp_path / "orthanc", Settings(), **orthanc_options) as orthanc:
            pending_record = wait_until_handled(orthanc, pending_id, times=1)
            assert pending_record["routed"] == len(pending_files)
            # Only what changed after the checkpoint was re-checked: the pending study.
            assert "1 study(ies) to re-check" in orthanc.log_path.read_text(errors="replace")
            routed_id = orthanc_study_id(orthanc, routed.study_instance_uid)
            assert routing_record(orthanc, routed_id) == {}
        assert sorted(ai_node.received(pending.study_instance_uid)) == sorted(
            uid for _, uid in pending_files
        )
        assert Counter(ai_node.received(routed.study_instance_uid)) == Counter(
            uid for _, uid in routed_files
        )
    finally:
        ai_node.stop()
