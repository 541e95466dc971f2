"""Reading another node's stored file: the file endpoint (real process), the node-aware reader
and its bounded cache."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pydicom
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from model.phantoms.__main__ import write_phantom_study
from shared.config import REPO_ROOT
from shared.db.models import StorageNode
from shared.storage.file_cache import FileCache
from shared.storage.instance_reader import NodeInstanceReader
from shared.storage.node_files import NodeDirectory, NodeFileClient
from shared.storage.refs import InstanceUnavailable, StoredFileRef
from tests.production.pki import make_pki
from tests.scale.nodes import node_env, start_file_server


def _store_like_the_listener(source: Path, storage: Path) -> StoredFileRef:
    """Put a DICOM file where node A's listener would have stored it; its row's reference."""
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    relative = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    (storage / relative).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, storage / relative)
    data = source.read_bytes()
    return StoredFileRef(relative, hashlib.sha256(data).hexdigest(), len(data), "node-a")


@pytest.fixture
def node_a(clean_db: Engine, tmp_path: Path):
    token = secrets.token_urlsafe(32)
    env = {**os.environ, **node_env("node-a", tmp_path / "a", {}, token)}
    server = start_file_server(env, tmp_path / "file-server.log")
    yield env, server
    server.stop()


def _reader(engine: Engine, tmp_path: Path, token: str, max_bytes: int = 50_000_000):
    return NodeInstanceReader(
        tmp_path / "b" / "storage",
        "node-b",
        FileCache(tmp_path / "b" / "cache", max_bytes),
        NodeFileClient(token, timeout_s=10),
        NodeDirectory(lambda: engine),
    )


def test_another_nodes_file_is_fetched_verified_cached_and_read_without_it_later(
    node_a, clean_db: Engine, tmp_path: Path
) -> None:
    env, server = node_a
    study = write_phantom_study("cxr", 11, tmp_path / "in", max_side=128)
    ref = _store_like_the_listener(study.files[0], Path(env["MEDREGA_STORAGE_DIR"]))
    with Session(clean_db) as session:  # the endpoint registered itself at start
        url = session.scalar(select(StorageNode.read_url).where(StorageNode.name == "node-a"))
    assert url == env["MEDREGA_NODE_READ_URL"]

    reader = _reader(clean_db, tmp_path, env["MEDREGA_NODE_READ_TOKEN"])
    path = reader.local_path(ref)
    assert path.is_relative_to(tmp_path / "b" / "cache")
    assert path.read_bytes() == study.files[0].read_bytes()
    # A row naming this node itself is read from its own storage directory, never fetched.
    own = StoredFileRef(ref.file_path, ref.sha256, ref.size_bytes, "node-b")
    assert reader.local_path(own) == (tmp_path / "b" / "storage" / ref.file_path).resolve()

    # Bytes that are not the row's are refused, and nothing is cached under the row's hash.
    lying = StoredFileRef(ref.file_path, "0" * 64, ref.size_bytes, "node-a")
    with pytest.raises(InstanceUnavailable, match="other bytes"):
        reader.local_path(lying)
    assert not reader.cache.path_of("0" * 64).exists()
    # A corrupt row never makes a request (nor reads outside a storage directory).
    for bad in ("../../etc/passwd", "/etc/passwd"):
        with pytest.raises(InstanceUnavailable):
            reader.local_path(StoredFileRef(bad, ref.sha256, ref.size_bytes, "node-a"))
        with pytest.raises(InstanceUnavailable):
            reader.local_path(StoredFileRef(bad, ref.sha256, ref.size_bytes, None))

    server.stop()  # node A goes away: its cached file is still readable here, others are not
    assert reader.local_path(ref) == path
    second = _store_like_the_listener(study.files[-1], Path(env["MEDREGA_STORAGE_DIR"]))
    if second.sha256 != ref.sha256:
        with pytest.raises(InstanceUnavailable, match="unreachable"):
            reader.local_path(second)


def test_the_endpoint_wants_the_token_and_serves_only_stored_instance_paths(
    node_a, tmp_path: Path
) -> None:
    env, _ = node_a
    study = write_phantom_study("cxr", 12, tmp_path / "in", max_side=128)
    ref = _store_like_the_listener(study.files[0], Path(env["MEDREGA_STORAGE_DIR"]))
    (Path(env["MEDREGA_STORAGE_DIR"]) / "secret.txt").write_text("not an instance")
    base = env["MEDREGA_NODE_READ_URL"] + "/v1/files/"
    token = env["MEDREGA_NODE_READ_TOKEN"]
    good = {"Authorization": f"Bearer {token}"}

    assert httpx.get(base + ref.file_path).status_code == 401
    wrong = "x" * len(token)
    assert (
        httpx.get(base + ref.file_path, headers={"Authorization": f"Bearer {wrong}"}).status_code
        == 401
    )
    answer = httpx.get(base + ref.file_path, headers=good)
    assert answer.status_code == 200 and answer.content == study.files[0].read_bytes()
    assert answer.headers["content-type"] == "application/dicom"
    head = httpx.head(base + ref.file_path, headers=good)
    assert head.status_code == 200 and int(head.headers["content-length"]) == ref.size_bytes

    with httpx.Client(headers=good) as client:
        for bad in ("secret.txt", "1.2/3.4/..%2F..%2Fsecret.txt", "1.2/3.4/5.6.txt", "a" * 400):
            assert client.get(base + bad).status_code == 400, bad
        assert client.get(base + "1.2/3.4/5.6.dcm").status_code == 404  # well-formed, absent
        assert client.post(base + ref.file_path).status_code == 405


def test_the_file_endpoint_refuses_to_start_with_a_short_token(
    clean_db: Engine, tmp_path: Path
) -> None:
    env = {**os.environ, **node_env("node-a", tmp_path / "a", {}, "too-short")}
    result = subprocess.run(
        [sys.executable, "-m", "services.listener.file_server"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0 and "MEDREGA_NODE_READ_TOKEN" in result.stderr


def test_the_cache_keeps_its_bound_and_evicts_the_least_recently_used(tmp_path: Path) -> None:
    cache = FileCache(tmp_path / "cache", max_bytes=3_000)
    blobs = [bytes([i]) * 1_000 for i in range(4)]
    hashes = [hashlib.sha256(b).hexdigest() for b in blobs]
    paths = [
        cache.get_or_put(h, 1_000, lambda out, b=b: out.write(b))
        for h, b in zip(hashes[:3], blobs, strict=False)
    ]
    for age, path in zip((300, 200, 100), paths, strict=True):  # 0 oldest … 2 newest
        os.utime(path, (path.stat().st_atime - age, path.stat().st_mtime - age))
    assert cache.get(hashes[0], 1_000) == paths[0]  # a hit makes 0 the most recent
    cache.get_or_put(hashes[3], 1_000, lambda out: out.write(blobs[3]))
    assert cache.total_bytes() <= 3_000
    assert cache.get(hashes[1], 1_000) is None  # the least recently used went first
    assert cache.get(hashes[0], 1_000) is not None and cache.get(hashes[3], 1_000) is not None
    assert cache.get(hashes[2], 1_000) is None  # down to 90 % of the bound
    assert not list((tmp_path / "cache" / ".partial").iterdir())  # nothing half-written left

    def refuse(out):  # a fetch that fails half-way leaves nothing under the hash
        out.write(b"partial")
        raise InstanceUnavailable("gone")

    with pytest.raises(InstanceUnavailable):
        cache.get_or_put(hashes[1], 1_000, refuse)
    assert cache.get(hashes[1], 1_000) is None
    assert not list((tmp_path / "cache" / ".partial").iterdir())


def test_over_tls_the_endpoint_is_verified_against_the_sites_ca(
    clean_db: Engine, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    cert, key = pki.issue("node-a")
    token = secrets.token_urlsafe(32)
    env = {**os.environ, **node_env("node-a", tmp_path / "a", {}, token)}
    env["MEDREGA_NODE_READ_URL"] = env["MEDREGA_NODE_READ_URL"].replace("http://", "https://")
    env.update(
        MEDREGA_NODE_READ_TLS_CERT=str(cert),
        MEDREGA_NODE_READ_TLS_KEY=str(key),
        MEDREGA_NODE_READ_TLS_CA=str(pki.ca),
    )
    study = write_phantom_study("cxr", 13, tmp_path / "in", max_side=128)
    ref = _store_like_the_listener(study.files[0], Path(env["MEDREGA_STORAGE_DIR"]))
    server = start_file_server(env, tmp_path / "file-server.log")
    try:
        trusting = NodeInstanceReader(
            tmp_path / "b" / "storage", "node-b", FileCache(tmp_path / "b" / "cache", 10**7),
            NodeFileClient(token, timeout_s=10, tls_ca=pki.ca), NodeDirectory(lambda: clean_db),
        )  # fmt: skip
        assert trusting.local_path(ref).read_bytes() == study.files[0].read_bytes()
        # Without the site's CA the endpoint is not believed (the system CAs never signed it).
        other = _reader(clean_db, tmp_path / "other", token)
        with pytest.raises(InstanceUnavailable, match="unreachable"):
            other.local_path(ref)
        # Plain HTTP gets no answer from the HTTPS-only endpoint.
        plain = env["MEDREGA_NODE_READ_URL"].replace("https://", "http://")
        with pytest.raises(httpx.HTTPError):
            httpx.get(
                plain + "/v1/files/" + ref.file_path, headers={"Authorization": f"Bearer {token}"}
            )
    finally:
        server.stop()
