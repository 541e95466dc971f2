"""Who an ORU is from and to, and how it names patients, orders and procedures.

Interface engines route and match on these fields, and every site names them differently, so
they are configuration (`MEDREGA_HL7_*`, shared.config) handed to the builder as one typed
value, `OruHeader`; the builder never reads the environment.

- MSH-3/4 sending application/facility, MSH-5/6 receiving application/facility: HD values
  (`namespace^universal id^universal id type`, e.g. `RAD^1.2.840.99.1^ISO`).
- PID-3.4: the assigning authority of the Patient ID (the PACS's patient identifier domain).
- ORC-2/3 and OBR-2/3 (placer/filler order number): the Accession Number under
  `accession_authority`, see shared.hl7.oru.
- OBR-4 (universal service ID): the study's requested procedure code when the modality sent one,
  else `default_procedure`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shared.hl7.escape import escape

ProcessingId = Literal["P", "T", "D"]


@dataclass(frozen=True)
class HierarchicDesignator:
    """HL7 HD: a namespace ID, optionally with a universal ID and its type (e.g. ISO)."""

    namespace: str = ""
    universal_id: str = ""
    universal_id_type: str = ""

    @classmethod
    def parse(cls, text: str) -> HierarchicDesignator:
        """`NS`, `NS^UID^TYPE` or `^UID^TYPE`; a universal ID needs its type and the other way
        round (HL7 2.5.1 HD rules). Raises ValueError naming what is wrong."""
        parts = text.strip().split("^")
        if len(parts) > 3:
            raise ValueError(f"HD {text!r} has more than 3 components (NS^UID^TYPE)")
        namespace, universal_id, id_type = [*parts, "", ""][:3]
        if bool(universal_id) != bool(id_type):
            raise ValueError(f"HD {text!r}: universal ID and its type go together")
        for part in (namespace, universal_id, id_type):
            if any(c in part for c in "|~\\&\r\n"):
                raise ValueError(f"HD {text!r} contains an HL7 delimiter")
        return cls(namespace.strip(), universal_id.strip(), id_type.strip())

    def er7(self, separator: str = "^") -> str:
        """As a field (`^` between components) or as a component (`&`, e.g. CX.4 in PID-3)."""
        parts = [escape(self.namespace), escape(self.universal_id), escape(self.universal_id_type)]
        return separator.join(parts).rstrip(separator)

    def __str__(self) -> str:
        return self.er7()


@dataclass(frozen=True)
class CodedElement:
    """HL7 CE (OBR-4): identifier, text, name of coding system."""

    code: str
    meaning: str
    scheme: str

    @classmethod
    def parse(cls, text: str) -> CodedElement:
        """`code^meaning^scheme`, all three present."""
        parts = [p.strip() for p in text.split("^")]
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"coded value {text!r} must be code^meaning^coding system")
        return cls(*parts)

    def er7(self) -> str:
        return "^".join(escape(p) for p in (self.code, self.meaning, self.scheme))


# LOINC "Diagnostic imaging study": true of every study we report, specific to none.
DEFAULT_PROCEDURE = CodedElement("18748-4", "Diagnostic imaging study", "LN")


@dataclass(frozen=True)
class OruHeader:
    sending_application: HierarchicDesignator = HierarchicDesignator("MEDREGA_PACS")
    sending_facility: HierarchicDesignator = HierarchicDesignator()
    receiving_application: HierarchicDesignator = HierarchicDesignator("RIS")
    receiving_facility: HierarchicDesignator = HierarchicDesignator()
    patient_id_authority: HierarchicDesignator = HierarchicDesignator()
    accession_authority: HierarchicDesignator = HierarchicDesignator("RIS")
    default_procedure: CodedElement = DEFAULT_PROCEDURE
    processing_id: ProcessingId = "P"
