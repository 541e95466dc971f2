"""The listener reads a C-STORE-RQ into the same request primitive as pynetdicom does, whether
its struct reading (services/listener/store_request.py) takes it or leaves it to pynetdicom."""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

import pynetdicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

from services.listener import reactor, store_request
from services.listener.reactor import EventDrivenAssociation
from services.listener.store_request import read_store_command


@pytest.fixture(autouse=True)
def _as_the_listener_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    # The listener binds no logging handlers (main.py); pynetdicom's default binds
    # EVT_DIMSE_RECV/SENT ones, which send every message through its own path.
    monkeypatch.setattr(pynetdicom._config, "LOG_HANDLER_LEVEL", "none")


_UIDS = (
    st.lists(st.integers(min_value=0, max_value=99_999), min_size=2, max_size=12)
    .map(lambda parts: "1.2." + ".".join(str(p) for p in parts))
    .filter(lambda uid: len(uid) <= 64)
)


def _request(
    message_id: int, priority: int, sop_class: str, sop_instance: str, data: bytes
) -> C_STORE:
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = UID(sop_class)
    request.AffectedSOPInstanceUID = UID(sop_instance)
    request.Priority = priority
    request.DataSet = BytesIO(data)
    return request


def _p_datas(request: C_STORE, max_pdu: int) -> list[P_DATA]:
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return list(message.encode_msg(1, max_pdu))


def _received(provider: DIMSEServiceProvider, p_datas: list[P_DATA]) -> dict[str, Any]:
    for p_data in p_datas:
        provider.receive_primitive(p_data)
    context_id, primitive = provider.get_msg(block=False)
    assert context_id == 1 and isinstance(primitive, C_STORE)
    seen = dict(vars(primitive))
    seen["_dataset"] = primitive.DataSet.getvalue()  # type: ignore[union-attr]
    return seen


def _providers() -> tuple[DIMSEServiceProvider, DIMSEServiceProvider]:
    ae = AE()
    ours = EventDrivenAssociation(ae, MODE_ACCEPTOR).dimse
    theirs = DIMSEServiceProvider(EventDrivenAssociation(ae, MODE_ACCEPTOR))
    return ours, theirs


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # the fixture is constant
)
@given(
    message_id=st.integers(min_value=0, max_value=0xFFFF),
    priority=st.sampled_from([0, 1, 2]),
    sop_class=_UIDS,
    sop_instance=_UIDS,
    data=st.binary(min_size=1, max_size=3000),
    max_pdu=st.sampled_from([0, 200, 1024, 16384]),
    move_originator=st.booleans(),
)
def test_the_same_request_primitive_as_pynetdicom(
    message_id: int,
    priority: int,
    sop_class: str,
    sop_instance: str,
    data: bytes,
    max_pdu: int,
    move_originator: bool,
) -> None:
    request = _request(message_id, priority, sop_class, sop_instance, data)
    if move_originator:  # not read by the struct path: pynetdicom's
        request.MoveOriginatorApplicationEntityTitle = "MOVER"
        request.MoveOriginatorMessageID = 3
    ours, theirs = _providers()
    p_datas = _p_datas(request, max_pdu)
    assert _received(ours, p_datas) == _received(theirs, p_datas)


def test_the_struct_path_takes_a_plain_request(monkeypatch: Any) -> None:
    taken: list[object] = []
    real = reactor.read_store_command

    def recording(encoded: Any) -> Any:
        taken.append(real(encoded))
        return taken[-1]

    monkeypatch.setattr(reactor, "read_store_command", recording)
    request = _request(5, 2, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", b"\x00" * 40)
    ours, _ = _providers()
    _received(ours, _p_datas(request, 16384))
    assert taken == [store_request.StoreCommand(5, 2, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")]


def test_commands_it_does_not_read_are_left_to_pynetdicom() -> None:
    request = _request(5, 2, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", b"\x00" * 4)
    command = _p_datas(request, 0)[0].presentation_data_value_list[0][1][1:]
    assert read_store_command(command) is not None
    assert read_store_command(command[:-1]) is None  # cut short
    assert read_store_command(command + b"\x00\x00\x00\x09\x02\x00\x00\x00\x00\x00") is None
    request.MoveOriginatorApplicationEntityTitle = "MOVER"
    moved = _p_datas(request, 0)[0].presentation_data_value_list[0][1][1:]
    assert read_store_command(moved) is None


def test_a_bound_dimse_recv_handler_still_gets_its_message() -> None:
    messages: list[object] = []
    ae = AE()
    assoc = EventDrivenAssociation(ae, MODE_ACCEPTOR)
    assoc.bind(evt.EVT_DIMSE_RECV, lambda event: messages.append(event.message))
    request = _request(9, 1, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.5", b"\x01" * 10)
    _received(assoc.dimse, _p_datas(request, 16384))
    assert len(messages) == 1


def test_a_command_inside_the_data_set_aborts_the_association() -> None:
    request = _request(5, 2, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", b"\x00" * 400)
    command, data = _p_datas(request, 16384)
    ours, _ = _providers()
    unfinished = P_DATA()
    whole_command = command.presentation_data_value_list[0][1]
    unfinished.presentation_data_value_list = [
        [1, whole_command],
        [1, b"\x00" + data.presentation_data_value_list[0][1][1:100]],  # not the last fragment
        [1, whole_command],  # a new command before the data set ended
    ]
    ours.receive_primitive(unfinished)
    assert ours.dul.event_queue.get(block=False) == "Evt19"
    assert ours.get_msg(block=False) == (None, None)  # nothing half-received is served


@pytest.mark.parametrize(
    ("element", "value"),
    [(0x0800, 0x0101), (0x0700, 3)],  # no data set; a priority PS3.7 does not define
    ids=["no data set", "priority 3"],
)
def test_a_command_with_an_unexpected_value_is_left_to_pynetdicom(element: int, value: int) -> None:
    request = _request(5, 2, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", b"\x00" * 4)
    command = bytearray(_p_datas(request, 0)[0].presentation_data_value_list[0][1][1:])
    at = bytes(command).index(struct.pack("<HHI", 0x0000, element, 2))
    command[at + 8 : at + 10] = struct.pack("<H", value)
    assert read_store_command(bytes(command)) is None
