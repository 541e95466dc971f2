"""Property: any report text (HL7 delimiters, backslash sequences, CJK, controls) and any
patient name survive build → ER7 → hl7apy parse → unescape."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.hl7.escape import escape, single_line, unescape
from shared.hl7.oru import ReportLine, build_oru
from shared.hl7.oru_read import read_oru
from tests.hl7.conftest import make_input

# Printable text weighted towards what breaks HL7: its delimiters, escape-lookalikes, CJK.
_tricky = st.sampled_from(
    ["|", "^", "~", "\\", "&", "\\F\\", "\\.br\\", "\\X41\\", "\r", "\n", "\x0b", "\x1c"]
)
_cjk = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)
_any = st.characters(blacklist_categories=["Cs"])
report_text = st.lists(st.one_of(_tricky, _cjk, _any), max_size=60).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(en=report_text, zh=report_text)
def test_report_text_round_trips(en: str, zh: str) -> None:
    er7 = build_oru(make_input(lines=(ReportLine("findings", en, zh, "A"),)), "ORU1V1")
    # Nothing may break the segment or MLLP framing.
    assert not any(c in er7.replace("\r", "") for c in "\n\x0b\x1c")
    received = read_oru(er7)
    assert received.lines("en") == ([single_line(en).strip()] if single_line(en).strip() else [])
    assert received.lines("zh") == ([single_line(zh).strip()] if single_line(zh).strip() else [])


@settings(max_examples=40, deadline=None)
@given(family=report_text, given_name=report_text)
def test_patient_name_round_trips(family: str, given_name: str) -> None:
    # "=", "^" and "\\" are PN's group, component and value delimiters (PS3.5 6.2), never text.
    family, given_name = (
        single_line(x).replace("=", "").replace("^", "").replace("\\", "").strip()
        for x in (family, given_name)
    )
    pn = f"Li^Wei={family}^{given_name}".rstrip("^").rstrip("=")
    received = read_oru(build_oru(make_input(patient_name_pn=pn), "ORU1V1"))
    assert received.patient_name_pn == pn


@given(_any | _tricky)
def test_escape_unescape_single_characters(ch: str) -> None:
    assert unescape(escape(ch)) == single_line(ch)
