"""Stored instance rows as the model backends' input (one mapping for drafts and region tools)."""

from __future__ import annotations

from pathlib import Path

from shared.db.models import Instance, Series
from shared.inference.backend import InstanceInput


def instance_input(instance: Instance, series: Series, storage_dir: Path) -> InstanceInput:
    return InstanceInput(
        path=storage_dir / instance.file_path,
        sop_instance_uid=instance.sop_instance_uid,
        sop_class_uid=instance.sop_class_uid,
        series_instance_uid=series.series_instance_uid,
        modality=series.modality,
        series_number=series.series_number,
        instance_number=instance.instance_number,
        body_part_examined=series.body_part_examined,
        series_description=series.series_description,
    )
