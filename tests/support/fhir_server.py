"""A small FHIR R4 server for DiagnosticReports: a real HTTP peer on loopback for the push tests.

It does what an EHR's FHIR server does with what we send: checks the media type (and a bearer
token when given one), validates the body with fhir.resources (R4B models), and performs a
conditional update (`PUT /DiagnosticReport?identifier=system|value`: update the one match, create
when none, 412 when several), keeping every version. Reads by id and by identifier let a test
look at what it holds. `fail_next` answers the next requests with an error (an outage).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fhir.resources.R4B.diagnosticreport import DiagnosticReport

FHIR_JSON = "application/fhir+json"


def _outcome(code: str, text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }


def _has_identifier(resource: dict[str, Any], token: str) -> bool:
    system, _, value = token.rpartition("|")
    return any(
        i.get("value") == value and (not system or i.get("system") == system)
        for i in resource.get("identifier", [])
    )


@dataclass
class FhirStore:
    token: str | None = None
    versions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # id → history
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path?query)
    fail_next: list[int] = field(default_factory=list)  # statuses to answer, in turn
    lock: threading.Lock = field(default_factory=threading.Lock)

    def current(self, resource_id: str) -> dict[str, Any]:
        return self.versions[resource_id][-1]

    def matching(self, token: str) -> list[str]:
        return [rid for rid, hist in self.versions.items() if _has_identifier(hist[-1], token)]

    def conditional_update(self, token: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            matches = self.matching(token)
            if len(matches) > 1:
                return 412, _outcome("multiple-matches", f"{len(matches)} match {token}")
            if body.get("id") and matches and body["id"] != matches[0]:
                return 400, _outcome("invalid", "the id differs from the matched resource's")
            created = not matches
            resource_id = matches[0] if matches else body.get("id") or uuid.uuid4().hex
            history = self.versions.setdefault(resource_id, [])
            stored = {**body, "id": resource_id}
            stored["meta"] = {**body.get("meta", {}), "versionId": str(len(history) + 1)}
            history.append(stored)
            return (201 if created else 200), stored


class _Handler(BaseHTTPRequestHandler):
    store: FhirStore

    def log_message(self, *_: object) -> None:  # quiet
        pass

    def _answer(self, status: int, body: dict[str, Any], location: str | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", f"{FHIR_JSON}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if location:
            self.send_header("Location", location)
        self.end_headers()
        self.wfile.write(data)

    def _refused(self) -> bool:
        self.store.requests.append((self.command, self.path))
        if self.store.fail_next:
            status = self.store.fail_next.pop(0)
            self._answer(status, _outcome("transient", "unavailable (test outage)"))
            return True
        if self.store.token and self.headers.get("Authorization") != f"Bearer {self.store.token}":
            self._answer(401, _outcome("login", "bearer token required"))
            return True
        return False

    def do_PUT(self) -> None:
        if self._refused():
            return
        parts = urlsplit(self.path)
        identifier = parse_qs(parts.query).get("identifier", [""])[0]
        if parts.path != "/DiagnosticReport" or not identifier:
            self._answer(400, _outcome("not-supported", "PUT /DiagnosticReport?identifier=…"))
            return
        if not self.headers.get("Content-Type", "").startswith(FHIR_JSON):
            self._answer(415, _outcome("not-supported", "send application/fhir+json"))
            return
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            body = json.loads(raw)
            DiagnosticReport.model_validate(body)
        except ValueError as exc:
            self._answer(400, _outcome("invalid", f"not a valid DiagnosticReport: {exc}"))
            return
        if not _has_identifier(body, identifier):
            self._answer(400, _outcome("invalid", "the body lacks the identifier searched"))
            return
        status, stored = self.store.conditional_update(identifier, body)
        if status >= 400:
            self._answer(status, stored)
            return
        version = stored["meta"]["versionId"]
        self._answer(status, stored, f"DiagnosticReport/{stored['id']}/_history/{version}")

    def do_GET(self) -> None:
        if self._refused():
            return
        parts = urlsplit(self.path)
        if parts.path.startswith("/DiagnosticReport/"):
            resource_id = parts.path.removeprefix("/DiagnosticReport/")
            if resource_id not in self.store.versions:
                self._answer(404, _outcome("not-found", resource_id))
                return
            self._answer(200, self.store.current(resource_id))
            return
        identifier = parse_qs(parts.query).get("identifier", [""])[0]
        found = [self.store.current(rid) for rid in self.store.matching(identifier)]
        self._answer(200, {"resourceType": "Bundle", "type": "searchset", "total": len(found),
                           "entry": [{"resource": r} for r in found]})  # fmt: skip


@contextmanager
def running_fhir_server(token: str | None = None) -> Iterator[tuple[str, FhirStore]]:
    """The server on a free loopback port; yields (base URL, its store)."""
    store = FhirStore(token=token)
    handler = type("Handler", (_Handler,), {"store": store})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", store
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
