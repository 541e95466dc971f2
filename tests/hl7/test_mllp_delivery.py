"""MLLP client against the real RIS sink (threaded, free port): every outcome a delivery task
must tell apart, and the Chinese name and report surviving the wire."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from ops.ris_sink import RisSink
from shared.delivery_policy import DeliveryError, RetryPolicy, after_failure
from shared.hl7.ack import Ack
from shared.hl7.errors import (
    AckControlIdMismatch,
    AckError,
    AckRejected,
    GarbledAck,
    RisTimeout,
    RisUnreachable,
)
from shared.hl7.mllp import send_message
from shared.hl7.oru import build_oru
from shared.hl7.oru_read import read_oru
from shared.reports.message_ids import hl7_control_id as message_control_id
from tests.hl7.conftest import CHINESE_PN, make_input

SinkFactory = Callable[..., RisSink]


def _oru(report_id: int = 42, version: int = 2, status: str = "P") -> tuple[str, str]:
    control_id = message_control_id(report_id, version)
    data = make_input(report_id=report_id, report_version=version, result_status=status)
    return build_oru(data, control_id), control_id


def _send(sink: RisSink, message: str, timeout_s: float = 2.0) -> Ack:
    return send_message(message, host=sink.host, port=sink.port, timeout_s=timeout_s)


def _stored(sink: RisSink) -> list[str]:
    return sorted(p.name for p in sink.out_dir.glob("*.hl7"))


def test_aa_is_delivered_and_the_chinese_report_survives(ris_sink: SinkFactory) -> None:
    sink = ris_sink()
    message, control_id = _oru(status="F")
    ack = _send(sink, message)
    assert ack.accepted and ack.code == "AA" and ack.control_id == control_id
    assert _stored(sink) == [f"{control_id}.hl7"]
    received = read_oru((sink.out_dir / f"{control_id}.hl7").read_bytes().decode("utf-8"))
    assert received.patient_name_pn == CHINESE_PN
    assert received.result_status == "F"
    assert received.lines("zh") == ["右肺尖少量气胸，约8毫米。", "心脏大小正常。", "右侧气胸。"]
    assert received.lines("en")[2] == "Right pneumothorax."


@pytest.mark.parametrize("status", ["P", "F", "C"])
def test_each_version_is_stored_once_even_when_resent(ris_sink: SinkFactory, status: str) -> None:
    sink = ris_sink()
    message, control_id = _oru(version={"P": 1, "F": 2, "C": 3}[status], status=status)
    for _ in range(3):
        _send(sink, message)
    assert _stored(sink) == [f"{control_id}.hl7"]
    assert sink.received == 3


def test_ae_is_a_transient_error(ris_sink: SinkFactory) -> None:
    sink = ris_sink(reply="AE")
    message, _ = _oru()
    with pytest.raises(AckError) as info:
        _send(sink, message)
    assert info.value.transient and info.value.ack_code == "AE"
    assert "simulated application error" in info.value.detail
    assert _stored(sink) == []


def test_ar_is_a_permanent_error(ris_sink: SinkFactory) -> None:
    sink = ris_sink(reply="AR")
    message, _ = _oru()
    with pytest.raises(AckRejected) as info:
        _send(sink, message)
    assert not info.value.transient and info.value.ack_code == "AR"
    assert after_failure(1, transient=info.value.transient, now=datetime.now(UTC)).state == "failed"


def test_stalled_ris_times_out_within_the_configured_time(ris_sink: SinkFactory) -> None:
    sink = ris_sink(stall_s=3.0, fail_first=1)
    message, control_id = _oru()
    started = time.monotonic()
    with pytest.raises(RisTimeout) as info:
        _send(sink, message, timeout_s=0.5)
    assert 0.45 <= time.monotonic() - started < 1.5
    assert info.value.transient
    # The retry is answered at once (only the first message stalls).
    assert _send(sink, message).accepted
    assert f"{control_id}.hl7" in _stored(sink)


def test_connection_refused_is_transient() -> None:
    with socket.socket() as placeholder:  # bound, never listening: connect is refused
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        message, _ = _oru()
        started = time.monotonic()
        with pytest.raises(RisUnreachable) as info:
            send_message(message, host="127.0.0.1", port=port, timeout_s=2)
    assert info.value.transient and time.monotonic() - started < 1


def test_ack_for_another_message_is_not_a_delivery(ris_sink: SinkFactory) -> None:
    sink = ris_sink(bad_ack="wrong-control-id")
    message, _ = _oru()
    with pytest.raises(AckControlIdMismatch) as info:
        _send(sink, message)
    assert info.value.transient and info.value.ack_code == "AA"


def test_garbled_ack_is_an_error(ris_sink: SinkFactory) -> None:
    sink = ris_sink(bad_ack="garbled")
    message, _ = _oru()
    with pytest.raises(GarbledAck):
        _send(sink, message)


def test_peer_that_hangs_up_without_answering() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        message, _ = _oru()
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(
                send_message, message, host="127.0.0.1", port=server.getsockname()[1], timeout_s=2
            )
            conn, _ = server.accept()
            conn.recv(65536)
            conn.sendall(b"garbage without framing")
            conn.close()
            with pytest.raises(GarbledAck):
                future.result(timeout=5)


def test_retry_loop_with_policy_delivers_after_transient_failures(ris_sink: SinkFactory) -> None:
    """What the delivery task does: AE twice, then AA — delivered on the third attempt."""
    sink = ris_sink(reply="AE", fail_first=2)
    message, control_id = _oru()
    policy = RetryPolicy(base_s=0.01, cap_s=0.05, max_attempts=5)
    attempts, state = 0, "pending"
    while state not in ("delivered", "failed"):
        attempts += 1
        try:
            _send(sink, message)
            state = "delivered"
        except DeliveryError as exc:
            decision = after_failure(
                attempts, transient=exc.transient, now=datetime.now(UTC), policy=policy
            )
            state = decision.state
            if decision.next_attempt_at is not None:
                time.sleep(max(0.0, (decision.next_attempt_at - datetime.now(UTC)).total_seconds()))
    assert (state, attempts) == ("delivered", 3)
    assert _stored(sink) == [f"{control_id}.hl7"]


def test_concurrent_deliveries_do_not_block_each_other(ris_sink: SinkFactory) -> None:
    sink = ris_sink(stall_s=1.5, fail_first=1)  # the first message is "poisoned" (stalls)
    messages = [_oru(report_id=100 + i, version=1) for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(_send, sink, messages[0][0], 0.5)
        time.sleep(0.1)
        others = [pool.submit(_send, sink, m, 2.0) for m, _ in messages[1:]]
        assert all(f.result().accepted for f in others)
        with pytest.raises(RisTimeout):
            first.result()
    assert len(_stored(sink)) >= 5
