"""Fetching a file from the node that stored it: where each node's file endpoint is (the
`storage_nodes` table) and one authenticated, bounded, verified download."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import httpx
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from shared.db.models import StorageNode
from shared.storage.refs import InstanceUnavailable, StoredFileRef, checked_relative_path
from shared.tls import client_tls_context

FILES_PREFIX = "/v1/files/"
MIN_TOKEN_BYTES = 32
_CHUNK = 1024 * 1024
# A node's address is looked up again after this long (or at once after a failed fetch).
_ADDRESS_TTL_S = 60.0


def checked_token(token: str | None) -> str:
    """The shared node token, refused when missing or short (it guards patients' images)."""
    if token is None or len(token.encode()) < MIN_TOKEN_BYTES:
        raise ValueError(
            f"MEDREGA_NODE_READ_TOKEN must be set to at least {MIN_TOKEN_BYTES} bytes shared by "
            "every node (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
        )
    return token


class NodeDirectory:
    """Node name → file endpoint URL, from `storage_nodes`, remembered for a minute."""

    def __init__(self, engine: Callable[[], Engine]) -> None:
        self._engine = engine  # asked for on first use: a reader is made before any database
        self._urls: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def url_of(self, node: str) -> str:
        with self._lock:
            known = self._urls.get(node)
        if known is not None and time.monotonic() - known[1] < _ADDRESS_TTL_S:
            return known[0]
        with Session(self._engine()) as session:
            url = session.scalar(select(StorageNode.read_url).where(StorageNode.name == node))
        if url is None:
            raise InstanceUnavailable(f"storage node {node!r} has not registered a file endpoint")
        with self._lock:
            self._urls[node] = (url, time.monotonic())
        return url

    def forget(self, node: str) -> None:
        with self._lock:
            self._urls.pop(node, None)


class NodeFileClient:
    """GET <node>/v1/files/<path> with the shared token; the bytes must be the row's bytes."""

    def __init__(self, token: str, timeout_s: float, tls_ca: Path | None = None) -> None:
        # HTTPS endpoints are verified as every other peer of ours (shared/tls.py): against
        # tls_ca (the site's CA), else the system's CAs.
        self._client = httpx.Client(
            timeout=timeout_s,
            verify=client_tls_context(tls_ca),
            headers={"Authorization": f"Bearer {checked_token(token)}"},
            follow_redirects=False,
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
        )

    def fetch(self, base_url: str, ref: StoredFileRef, out: BinaryIO) -> None:
        """Write the file into `out`; InstanceUnavailable when the node can't or won't give
        exactly the stored bytes (unreachable, refused, wrong size or hash)."""
        url = base_url.rstrip("/") + FILES_PREFIX + checked_relative_path(ref.file_path)
        digest = hashlib.sha256()
        received = 0
        try:
            with self._client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise InstanceUnavailable(
                        f"node {ref.node!r} answered {response.status_code} for {ref.file_path}"
                    )
                for chunk in response.iter_bytes(_CHUNK):
                    received += len(chunk)
                    if received > ref.size_bytes:  # never store more than the row says exists
                        raise InstanceUnavailable(f"node {ref.node!r} sent more bytes than stored")
                    digest.update(chunk)
                    out.write(chunk)
        except httpx.HTTPError as exc:
            raise InstanceUnavailable(
                f"node {ref.node!r} unreachable for {ref.file_path}: {type(exc).__name__}"
            ) from exc
        if received != ref.size_bytes or digest.hexdigest() != ref.sha256:
            raise InstanceUnavailable(f"node {ref.node!r} sent other bytes for {ref.file_path}")
