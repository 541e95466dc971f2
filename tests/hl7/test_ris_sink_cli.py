"""`python -m ops.ris_sink` as a real process: listens, stores, logs without PHI, stops on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import REPO_ROOT
from shared.hl7.errors import AckError
from shared.hl7.mllp import send_message
from shared.hl7.oru import build_oru
from tests.hl7.conftest import make_input


def test_cli_sink_end_to_end(tmp_path: Path) -> None:
    inbox = tmp_path / "ris-inbox"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ops.ris_sink",
            "--port",
            "0",
            "--out",
            str(inbox),
            "--reply",
            "AE",
            "--fail-first",
            "1",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert banner.startswith("RIS sink listening on 127.0.0.1:"), banner
        port = int(banner.split()[4].rsplit(":", 1)[1])
        message = build_oru(make_input(result_status="F"), "ORU42V2")
        with pytest.raises(AckError):
            send_message(message, host="127.0.0.1", port=port, timeout_s=5)
        assert send_message(message, host="127.0.0.1", port=port, timeout_s=5).accepted
        assert [p.name for p in inbox.iterdir()] == ["ORU42V2.hl7"]
        assert (inbox / "ORU42V2.hl7").read_bytes() == message.encode("utf-8")
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "control_id=ORU42V2" in stderr and "obr25=F" in stderr and "reply=AE" in stderr
    for phi in ("Wang", "王", "PX0001", "19800102", "ACC0001"):
        assert phi not in stderr
