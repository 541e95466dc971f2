"""This node's stored files for the other nodes: `GET /v1/files/<Study>/<Series>/<SOP>.dcm`.

Scale-out with no shared disk: each node's listener stores into its own storage directory and
records its node name on each row; a worker, web app or delivery worker on another machine
fetches the file here (shared.storage.instance_reader) and caches it. Why here and not DICOMweb
from the PACS: see shared/storage/instance_reader.py.

- One bearer token shared by every node (MEDREGA_NODE_READ_TOKEN, a secrets file in production),
  compared in constant time; no token, no bytes (401). At least 32 bytes or the server refuses
  to start.
- Inputs are bounded: only content-store paths (UID/UID/UID[.hash].dcm, shared.storage.refs),
  resolved inside the storage directory, regular files only; GET and HEAD only; at most
  MAX_CONCURRENT requests at once (503 beyond), small request heads (uvicorn's h11 limits).
- It needs no database to serve, only to register: at start it records its name and advertised
  URL (MEDREGA_NODE_READ_URL) in `storage_nodes`, so the other nodes find it.

Run it beside the listener, on the same storage directory: `python -m services.listener.file_server`
(`--check`: exit 0 when it answers). With MEDREGA_NODE_READ_TLS_CERT/_KEY it speaks HTTPS only
(the other nodes verify it against MEDREGA_NODE_READ_TLS_CA); use that on any network that is
not the stack's own.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import sys
from pathlib import Path

import uvicorn
from sqlalchemy import Engine, func
from sqlalchemy.dialects.postgresql import insert
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

from shared.config import Settings, get_settings
from shared.db.models import StorageNode
from shared.observability.logs import configure_service_logging
from shared.storage.node_files import FILES_PREFIX, checked_token
from shared.storage.refs import RELATIVE_PATH

log = logging.getLogger(__name__)

MAX_CONCURRENT = 32
MAX_PATH_CHARS = 300


def create_app(storage_dir: Path, token: str) -> Starlette:
    root = storage_dir.resolve()
    expected = f"Bearer {checked_token(token)}".encode()

    async def serve_file(request: Request) -> Response:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return PlainTextResponse(
                "a valid node token is required", 401, headers={"WWW-Authenticate": "Bearer"}
            )
        relative = request.path_params["file_path"]
        if len(relative) > MAX_PATH_CHARS or not RELATIVE_PATH.fullmatch(relative):
            return PlainTextResponse("not a stored instance path", 400)
        path = (root / relative).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            return PlainTextResponse("no such file on this node", 404)
        return FileResponse(
            path, media_type="application/dicom", headers={"Cache-Control": "no-store"}
        )

    async def health(_: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route(FILES_PREFIX + "{file_path:path}", serve_file, methods=["GET", "HEAD"]),
            Route("/healthz", health, methods=["GET"]),
        ]
    )


def register_node(engine: Engine, name: str, read_url: str) -> None:
    """Record (or move) this node's endpoint so the other nodes find its files."""
    statement = insert(StorageNode).values(name=name, read_url=read_url)
    statement = statement.on_conflict_do_update(
        index_elements=[StorageNode.name],
        set_={"read_url": statement.excluded.read_url, "registered_at": func.now()},
    )
    with engine.begin() as connection:
        connection.execute(statement)


def _configured(settings: Settings) -> tuple[str, str, str]:
    """(node name, advertised URL, token), or SystemExit naming what is missing."""
    missing = [
        name
        for name, value in (
            ("MEDREGA_NODE_NAME", settings.node_name),
            ("MEDREGA_NODE_READ_URL", settings.node_read_url),
        )
        if not value
    ]
    if missing:
        raise SystemExit(f"file server: set {' and '.join(missing)}")
    token = settings.node_read_token.get_secret_value() if settings.node_read_token else None
    try:
        checked_token(token)
    except ValueError as exc:
        raise SystemExit(f"file server: {exc}") from None
    assert settings.node_name and settings.node_read_url and token
    return settings.node_name, settings.node_read_url, token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 0 when the endpoint answers")
    args = parser.parse_args()
    settings = get_settings()
    configure_service_logging(
        "file-server", settings, "%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    tls = settings.node_read_tls_cert is not None
    if args.check:
        import httpx

        scheme = "https" if tls else "http"
        url = f"{scheme}://127.0.0.1:{settings.node_read_port}/healthz"
        # A liveness probe of this process on loopback: whether it answers, not who it is.
        sys.exit(0 if httpx.get(url, timeout=5, verify=False).status_code == 200 else 1)
    name, read_url, token = _configured(settings)
    from shared.db.session import get_engine

    register_node(get_engine(), name, read_url)
    log.info("node %s serves %s at %s", name, settings.storage_dir, read_url)
    uvicorn.run(
        create_app(settings.storage_dir, token),
        host=settings.node_read_host,
        port=settings.node_read_port,
        limit_concurrency=MAX_CONCURRENT,
        timeout_keep_alive=30,
        log_level="warning",
        server_header=False,
        ssl_certfile=str(settings.node_read_tls_cert) if tls else None,
        ssl_keyfile=str(settings.node_read_tls_key) if tls else None,
    )


if __name__ == "__main__":
    main()
