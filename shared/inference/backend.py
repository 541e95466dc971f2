"""The one model interface the worker talks to, whichever backend serves it.

`onnx` runs the bundled reference model (or any model honouring its I/O contract) in-process;
`mllm` (a served MedRegA behind an OpenAI-compatible API) plugs in behind the same Protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from shared.reports.domain import DraftResult, ImageRef, PixelBox
from shared.storage.refs import StoredFileRef


@dataclass(frozen=True)
class InstanceInput:
    """One stored instance of the study, as the database knows it."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    modality: str | None
    series_number: int | None
    instance_number: int | None
    body_part_examined: str | None
    series_description: str | None
    # Where the bytes live when `path` is not on this machine yet (another node's storage):
    # shared.storage.instance_reader.localize_study fetches them and sets `path`.
    stored: StoredFileRef | None = None


@dataclass(frozen=True)
class StudyInput:
    study_instance_uid: str
    instances: list[InstanceInput]


@dataclass(frozen=True)
class LocateAnswer:
    """Text→Region: where a named structure is."""

    region_code: str | None  # None: the name is not in our vocabulary
    image: ImageRef
    boxes: list[PixelBox]
    probability: float | None


@dataclass(frozen=True)
class IdentifyAnswer:
    """Region→Text: which structure a box holds."""

    region_code: str | None
    name_en: str
    name_zh: str
    probability: float | None


class ModelServerUnavailable(RuntimeError):
    """The served model could not be reached or did not answer in time (after the backend's own
    retries). Transient: the draft job waits with backoff; interactive tools say so."""


class ModelAnswerInvalid(RuntimeError):
    """The model answered, but nothing usable could be read from it (the message says what it
    said). Not retried: the same input would get the same answer."""


class ModelBackend(Protocol):
    name: str

    def draft(self, study: StudyInput) -> DraftResult:
        """A grounded draft, or `applicable=False` with the reason. Never raises for bad input."""
        ...

    def locate(self, image: InstanceInput, frame: int, query: str) -> LocateAnswer: ...

    def identify(self, image: InstanceInput, frame: int, box: PixelBox) -> IdentifyAnswer: ...
