"""delivery kinds for GSPS, KOS and FHIR; the study's procedure code

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 15:20:00

- `deliveries.kind` admits 'gsps' (a Grayscale Softcopy Presentation State per key image),
  'kos' (the Key Object Selection of the findings' images) and 'fhir' (a DiagnosticReport
  pushed to the EHR's FHIR server), beside 'sr' and 'hl7'. They follow the same lifecycle
  rules as the SR: the guards in 0003 key on (study, kind, destination).
- `studies.procedure_code_*`: the requested procedure's code (DICOM Requested Procedure Code
  Sequence, else Procedure Code Sequence), so the ORU's OBR-4 names the study's own
  procedure instead of a fixed code.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KINDS_BEFORE = "kind IN ('sr', 'hl7')"
_KINDS_AFTER = "kind IN ('sr', 'hl7', 'gsps', 'kos', 'fhir')"


def upgrade() -> None:
    op.drop_constraint(op.f("ck_deliveries_kind_valid"), "deliveries", type_="check")
    op.create_check_constraint(op.f("ck_deliveries_kind_valid"), "deliveries", _KINDS_AFTER)
    op.add_column("studies", sa.Column("procedure_code_value", sa.String(length=16)))
    op.add_column("studies", sa.Column("procedure_code_scheme", sa.String(length=16)))
    op.add_column("studies", sa.Column("procedure_code_meaning", sa.String(length=64)))


def downgrade() -> None:
    op.drop_column("studies", "procedure_code_meaning")
    op.drop_column("studies", "procedure_code_scheme")
    op.drop_column("studies", "procedure_code_value")
    op.execute("DELETE FROM deliveries WHERE kind IN ('gsps', 'kos', 'fhir')")
    op.drop_constraint(op.f("ck_deliveries_kind_valid"), "deliveries", type_="check")
    op.create_check_constraint(op.f("ck_deliveries_kind_valid"), "deliveries", _KINDS_BEFORE)
