"""One way to read a stored instance, on one box or on several machines with no shared disk.

Every reader of pixels or headers (drafts, Locate/Identify, the web viewer, the SR's source
headers) asks `instance_reader(...).local_path(ref)` for a path it can open:
- `LocalInstanceReader`: the file in this machine's storage directory (a single box; or a row
  this node's own listener stored);
- `NodeInstanceReader`: a row stored by another node's listener is fetched from that node's file
  endpoint (services/listener/file_server.py; authenticated, verified against the row's sha256)
  into a size-bounded LRU cache on this machine's disk (file_cache), then read from there.

Why the listener's own endpoint and not DICOMweb WADO-RS from the PACS: drafting must not depend
on the PACS (a study may reach us straight from a modality and never be in Orthanc; Orthanc may
be down, busy, or have pruned it), and the listener already holds exactly the bytes a row's
sha256 describes — WADO-RS would give Orthanc's copy, possibly transcoded, that we can't verify.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Protocol

from shared.inference.backend import InstanceInput, StudyInput
from shared.storage.file_cache import FileCache
from shared.storage.node_files import NodeDirectory, NodeFileClient
from shared.storage.refs import InstanceUnavailable, StoredFileRef, checked_relative_path

# Files of one study fetched at once from other nodes (a CT's slices).
FETCH_PARALLELISM = 4


class InstanceReader(Protocol):
    def local_path(self, ref: StoredFileRef) -> Path:
        """A path on this machine holding the file's bytes (OSError when it can't be had)."""
        ...


class LocalInstanceReader:
    def __init__(self, storage_dir: Path) -> None:
        self.storage_dir = storage_dir.resolve()

    def local_path(self, ref: StoredFileRef) -> Path:
        path = (self.storage_dir / ref.file_path).resolve()
        if not path.is_relative_to(self.storage_dir):  # a corrupt row must never read outside
            raise InstanceUnavailable(f"stored path outside the storage directory: {ref.file_path}")
        return path


class NodeInstanceReader(LocalInstanceReader):
    """This node's rows from its storage directory, other nodes' through the cache."""

    def __init__(
        self,
        storage_dir: Path,
        own_node: str,
        cache: FileCache,
        client: NodeFileClient,
        directory: NodeDirectory,
    ) -> None:
        super().__init__(storage_dir)
        self.own_node = own_node
        self.cache = cache
        self._client = client
        self._directory = directory

    def local_path(self, ref: StoredFileRef) -> Path:
        if ref.node is None or ref.node == self.own_node:
            return super().local_path(ref)
        try:
            checked_relative_path(ref.file_path)
        except ValueError as exc:  # a corrupt row: never ask another node for it
            raise InstanceUnavailable(str(exc)) from None
        node = ref.node

        def download(out: BinaryIO) -> None:
            try:
                self._client.fetch(self._directory.url_of(node), ref, out)
            except InstanceUnavailable:
                self._directory.forget(node)  # it may have moved: look it up again next time
                raise

        return self.cache.get_or_put(ref.sha256, ref.size_bytes, download)


@lru_cache(maxsize=4)
def instance_reader(storage_dir: Path) -> InstanceReader:
    """The reader for this process's settings: local on a single box (no MEDREGA_NODE_NAME),
    node-aware otherwise. Tests pass their own storage directory; it is read the same way."""
    from shared.config import get_settings
    from shared.db.session import get_engine

    settings = get_settings()
    if settings.node_name is None:
        return LocalInstanceReader(storage_dir)
    token = settings.node_read_token.get_secret_value() if settings.node_read_token else None
    return NodeInstanceReader(
        storage_dir,
        settings.node_name,
        FileCache(settings.instance_cache_dir, settings.instance_cache_max_bytes),
        NodeFileClient(token or "", settings.node_read_timeout_s, settings.node_read_tls_ca),
        NodeDirectory(get_engine),
    )


def localize(instance: InstanceInput, reader: InstanceReader) -> InstanceInput:
    """The instance with a `path` readable on this machine (another node's file fetched)."""
    if instance.stored is None:
        return instance
    return replace(instance, path=reader.local_path(instance.stored))


def localize_study(study: StudyInput, reader: InstanceReader) -> StudyInput:
    """Every instance `localize`d, a few fetched at once (a CT's slices from another node).
    Raises InstanceUnavailable when one can't be had."""
    with ThreadPoolExecutor(FETCH_PARALLELISM) as pool:
        instances = list(pool.map(lambda i: localize(i, reader), study.instances))
    return replace(study, instances=instances)
