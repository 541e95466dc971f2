"""Shared inputs for the HL7 tests: a typical report, and a real RIS sink on a free port."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ops.ris_sink import RisSink, SinkBehaviour
from shared.hl7.oru import Interpreter, OruInput, ReportLine

CHINESE_PN = "Wang^Xiaoming=王^小明"
SR_UID = "1.2.826.0.1.3680043.8.498.7781.99.1"
STUDY_UID = "1.2.826.0.1.3680043.8.498.7781.1.2.3"


def make_input(**changes: Any) -> OruInput:
    base = OruInput(
        report_id=42,
        report_version=2,
        result_status="P",
        status_changed_at=datetime(2026, 11, 28, 5, 0, 0, tzinfo=UTC),
        observation_dtm="20261128041500",
        patient_id="PX0001",
        patient_name_pn=CHINESE_PN,
        patient_birth_date="19800102",
        patient_sex="M",
        accession_number="ACC0001",
        study_instance_uid=STUDY_UID,
        lines=(
            ReportLine(
                "findings",
                "Small right apical pneumothorax, 8 mm.",
                "右肺尖少量气胸，约8毫米。",
                "AA",
            ),
            ReportLine("findings", "Heart size is normal.", "心脏大小正常。", "N"),
            ReportLine("impression", "Right pneumothorax.", "右侧气胸。", "AA"),
        ),
        critical=True,
        sr_sop_instance_uid=SR_UID,
        interpreter=Interpreter(id="lwei", name_pn="Li^Wei=李^伟"),
        model="medrega-ref 1.0.0",
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def oru_input() -> OruInput:
    return make_input()


@pytest.fixture
def ris_sink(tmp_path: Path) -> Iterator[Callable[..., RisSink]]:
    """Factory: start a real MLLP RIS sink (in a thread, on a free port) with a behaviour."""
    sinks: list[RisSink] = []

    def start(**behaviour: Any) -> RisSink:
        sink = RisSink(tmp_path / f"inbox{len(sinks)}", behaviour=SinkBehaviour(**behaviour))
        sinks.append(sink.start())
        return sink

    yield start
    for sink in sinks:
        sink.stop()
