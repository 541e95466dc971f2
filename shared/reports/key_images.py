"""Which findings a PACS is shown as key: what the GSPS draws and the KOS flags (pure, no DICOM).

Sent (not rejected), abnormal and on a named image. A region the report calls normal is said in
the SR's narrative only: a PACS viewer shows every annotation alike, and thirteen 'normal'
boxes would bury the one finding.
"""

from __future__ import annotations

from collections.abc import Iterable

from shared.reports.domain import RegionFindingResult


def key_findings_of(findings: Iterable[RegionFindingResult]) -> list[RegionFindingResult]:
    """The key findings among a version's findings (rejected ones included, and left out here)."""
    return [
        f for f in findings if not f.rejected and f.finding_code is not None and f.image is not None
    ]


def key_image_uids(findings: Iterable[RegionFindingResult]) -> list[str]:
    """SOP Instance UIDs of the findings' images, first appearance first, each once."""
    seen: dict[str, None] = {}
    for finding in findings:
        if finding.image is not None:
            seen.setdefault(finding.image.sop_instance_uid, None)
    return list(seen)
