"""Read an ORU^R01 back (the RIS sink, tests, the end-to-end check): parsed by hl7apy, checked by
its Validator, values unescaped into plain Python types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from shared.hl7.escape import unescape
from shared.hl7.names import xpn_to_dicom_pn


@dataclass(frozen=True)
class ReceivedObservation:
    set_id: str
    value_type: str  # OBX-2
    code: str  # OBX-3.1
    sub_id: str  # OBX-4, e.g. "2.zh" or "SR"
    value: str  # OBX-5, unescaped (components joined by '^' for RP)
    abnormal_flag: str  # OBX-8
    status: str  # OBX-11

    @property
    def language(self) -> str:
        return self.sub_id.rpartition(".")[2] if "." in self.sub_id else ""


@dataclass(frozen=True)
class ReceivedOru:
    control_id: str
    processing_id: str
    character_set: str
    patient_id: str
    patient_name_pn: str  # rebuilt DICOM PN
    birth_date: str
    sex: str
    placer_order: str  # ORC-2/OBR-2 entity identifier
    filler_order: str  # OBR-3 entity identifier
    filler_authority: str  # OBR-3 namespace
    result_status: str  # OBR-25
    interpreter: str  # OBR-32 as ER7
    observations: tuple[ReceivedObservation, ...]

    def lines(self, language: str, code: str | None = None) -> list[str]:
        """Report lines in `language`, optionally only one section (OBX-3 code)."""
        return [
            o.value
            for o in self.observations
            if o.language == language and (code is None or o.code == code)
        ]

    def observation(self, code: str) -> ReceivedObservation | None:
        return next((o for o in self.observations if o.code == code), None)


def _er7(element: Any) -> str:
    return str(element.to_er7()) if element is not None else ""


def _component(value: str, number: int, separator: str = "^") -> str:
    parts = value.split(separator)
    return parts[number - 1] if number <= len(parts) else ""


def read_oru(message: str) -> ReceivedOru:
    """Parse and validate. Parsing is TOLERANT because hl7apy's STRICT parser caps the "varies"
    OBX-5 at 199 characters; validate() then applies hl7apy's full structural checks."""
    # Accept \n too (a file read in text mode): values never hold a raw line break, see escape.py.
    er7 = message.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    parsed = parse_message(er7, validation_level=VALIDATION_LEVEL.TOLERANT)
    parsed.validate()
    result = parsed.ORU_R01_PATIENT_RESULT
    pid = result.ORU_R01_PATIENT.PID
    order = result.ORU_R01_ORDER_OBSERVATION
    obr = order.OBR
    names = [[c for c in _er7(rep).split("^")] for rep in pid.pid_5]
    observations = []
    for group in order.ORU_R01_OBSERVATION:
        obx = group.OBX
        value = _er7(obx.obx_5)
        observations.append(
            ReceivedObservation(
                set_id=_er7(obx.obx_1),
                value_type=_er7(obx.obx_2),
                code=unescape(_component(_er7(obx.obx_3), 1)),
                sub_id=unescape(_er7(obx.obx_4)),
                value="^".join(unescape(c) for c in value.split("^")),
                abnormal_flag=_er7(obx.obx_8),
                status=_er7(obx.obx_11),
            )
        )
    obr_3 = _er7(obr.obr_3)
    return ReceivedOru(
        control_id=unescape(_er7(parsed.msh.msh_10)),
        processing_id=_er7(parsed.msh.msh_11),
        character_set=_er7(parsed.msh.msh_18),
        patient_id=unescape(_component(_er7(pid.pid_3), 1)),
        patient_name_pn=xpn_to_dicom_pn(names),
        birth_date=_er7(pid.pid_7),
        sex=_er7(pid.pid_8),
        placer_order=unescape(_component(_er7(obr.obr_2), 1)),
        filler_order=unescape(_component(obr_3, 1)),
        filler_authority=unescape(_component(obr_3, 2)),
        result_status=_er7(obr.obr_25),
        interpreter=_er7(obr.obr_32),
        observations=tuple(observations),
    )
