"""Our UID root helpers (shared/dicom/uids.py), used to recognise our own SR output."""

from __future__ import annotations

from pydicom.uid import UID, generate_uid

from shared.dicom.uids import MEDREGA_UID_ROOT, derived_uid, is_own_uid, is_valid_uid, new_uid


def test_derived_uid_is_deterministic_valid_and_ours() -> None:
    first = derived_uid("report", "17", "2")
    assert first == derived_uid("report", "17", "2")
    assert first != derived_uid("report", "17", "3")
    assert first.startswith(MEDREGA_UID_ROOT) and is_own_uid(first)
    assert is_valid_uid(first) and UID(first).is_valid


def test_foreign_and_malformed_uids() -> None:
    assert not is_own_uid(str(generate_uid()))
    assert is_own_uid(new_uid()) and new_uid() != new_uid()
    for bad in ("", "1.02.3", "1..2", "../etc", "1.2.a", "1." + "2" * 70):
        assert not is_valid_uid(bad)
