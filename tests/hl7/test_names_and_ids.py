"""DICOM PN ↔ XPN, and deterministic message control IDs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.hl7.names import dicom_pn_to_xpn, display_name, xpn_to_dicom_pn
from shared.reports.message_ids import hl7_control_id as message_control_id


def _round_trip(pn: str) -> str:
    return xpn_to_dicom_pn([rep.split("^") for rep in dicom_pn_to_xpn(pn)])


@pytest.mark.parametrize(
    "pn",
    [
        "Wang^Xiaoming=王^小明",
        "Wang^Xiaoming=王^小明=ワン^シャオミン",
        "=王^小明",
        "Doe^John^Q^Dr^Jr",
        "Yamada^Tarou=山田^太郎=やまだ^たろう",
        "O'Brien&Co^Mary|Ann",
    ],
)
def test_person_name_round_trip(pn: str) -> None:
    assert _round_trip(pn) == pn


def test_xpn_layout() -> None:
    assert dicom_pn_to_xpn("Doe^John^Q^Dr^Jr") == ["Doe^John^Q^Jr^Dr^^L^A"]
    assert dicom_pn_to_xpn("Wang^Xiaoming=王^小明") == [
        "Wang^Xiaoming^^^^^L^A",
        "王^小明^^^^^L^I",
    ]
    assert dicom_pn_to_xpn("") == ["^^^^^^U"]
    assert display_name("=王^小明") == "王^小明"


_pn_component = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="^=\\"),
    max_size=6,
).map(str.strip)


@given(st.lists(st.lists(_pn_component, min_size=1, max_size=5), min_size=1, max_size=3))
def test_person_name_round_trip_property(groups: list[list[str]]) -> None:
    pn = "=".join("^".join(g).rstrip("^") for g in groups).rstrip("=")
    assert _round_trip(pn) == pn


def test_control_id_is_deterministic_short_and_distinct() -> None:
    assert message_control_id(42, 3) == message_control_id(42, 3) == "ORU42V3"
    ids = {
        message_control_id(r, v, k)
        for r in (1, 12, 123)
        for v in (1, 2, 23)
        for k in ("ORU", "ADD")
    }
    assert len(ids) == 18
    assert all(len(i) <= 20 for i in ids)


def test_control_id_falls_back_to_a_hash_when_too_long() -> None:
    big = message_control_id(10**15, 12345)
    assert big.startswith("X-") and len(big) == 20
    assert big == message_control_id(10**15, 12345)
    assert big != message_control_id(10**15, 12346)


@given(st.integers(0, 2**63 - 1), st.integers(0, 10**6))
def test_control_id_property(report_id: int, version: int) -> None:
    cid = message_control_id(report_id, version)
    assert 0 < len(cid) <= 20 and cid.replace("-", "").isalnum()


def test_control_id_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        message_control_id(-1, 1)
    with pytest.raises(ValueError):
        message_control_id(1, 1, "a|b")
    with pytest.raises(ValueError):
        message_control_id(1, 1, "A1")  # a digit would make A1+23 read like A+123


def test_several_names_become_one_xpn_each_and_survive_delimiters() -> None:
    """A multi-valued PN (as the listener stores it, DICOM's backslash between names) with HL7
    delimiters inside: every name is its own PID-5 repetition, nothing leaks between them."""
    pn = "Doe^John\\O|Brien^Mary~Ann&Co=奥^玛丽"
    xpns = dicom_pn_to_xpn(pn)
    assert len(xpns) == 3
    assert xpns[0].startswith("Doe^John^")
    assert xpns[1].startswith("O\\F\\Brien^Mary\\R\\Ann\\T\\Co^")
    assert xpns[2].startswith("奥^玛丽^") and xpns[2].endswith("^I")
    assert display_name(pn) == "Doe^John"
