"""Stored instance rows as the model backends' input (one mapping for drafts and region tools)."""

from __future__ import annotations

from pathlib import Path

from shared.db.models import Instance, Series
from shared.inference.backend import InstanceInput
from shared.storage.refs import StoredFileRef


def stored_file(instance: Instance) -> StoredFileRef:
    """Where the instance's bytes are, for shared.storage.instance_reader."""
    return StoredFileRef(
        file_path=instance.file_path,
        sha256=instance.sha256,
        size_bytes=instance.size_bytes,
        node=instance.storage_node,
    )


def instance_input(instance: Instance, series: Series, storage_dir: Path) -> InstanceInput:
    """`path` is where the file would be in this machine's storage directory; callers that read
    it pass the input through `localize_study` (another node's file is fetched then)."""
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
        stored=stored_file(instance),
    )
