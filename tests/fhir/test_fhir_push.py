"""The DiagnosticReport push against a real FHIR HTTP server on loopback (tests/support): a
conditional update keeps one resource per study across versions and retries; outages are
retried, refusals are not."""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest

from services.worker.fhir_push import FhirRefused, FhirUnavailable, put_report
from shared.fhir.diagnostic_report import diagnostic_report_json
from tests.fhir.test_diagnostic_report import _finding, _version
from tests.support.fhir_server import running_fhir_server


def _reports() -> tuple[dict, dict]:
    draft = _version([_finding("pleural_effusion")])
    signed = replace(_version([_finding("pleural_effusion")], status="signed"), version=2)
    return (
        diagnostic_report_json(draft, institution="H"),
        diagnostic_report_json(signed, institution="H"),
    )


def test_versions_and_retries_update_one_resource() -> None:
    preliminary, final = _reports()
    with running_fhir_server() as (base, store):
        status, location = put_report(preliminary, base, token=None, timeout_s=5)
        assert status == "201" and location is not None
        resource_id = location.split("/")[1]
        assert store.current(resource_id)["status"] == "preliminary"
        for expected_version in ("2", "3"):  # the final, then the same final again (a retry)
            status, location = put_report(final, base, token=None, timeout_s=5)
            assert status == "200"
            assert location == f"DiagnosticReport/{resource_id}/_history/{expected_version}"
        assert list(store.versions) == [resource_id]
        assert store.current(resource_id)["status"] == "final"
        assert [r["status"] for r in store.versions[resource_id]] == [
            "preliminary",
            "final",
            "final",
        ]
        method, path = store.requests[0]
        assert method == "PUT" and path.startswith("/DiagnosticReport?identifier=")


def test_an_outage_is_retried_and_a_refusal_is_not() -> None:
    preliminary, _ = _reports()
    with running_fhir_server(token="s3cret") as (base, store):
        store.fail_next = [503]
        with pytest.raises(FhirUnavailable) as outage:
            put_report(preliminary, base, token="s3cret", timeout_s=5)
        assert outage.value.ack_code == "503" and type(outage.value).transient
        with pytest.raises(FhirRefused, match="HTTP 401 \\(login\\)"):
            put_report(preliminary, base, token="wrong", timeout_s=5)
        broken = {**preliminary, "status": None}  # the server validates what it gets
        with pytest.raises(FhirRefused, match="HTTP 400 \\(invalid\\)"):
            put_report(broken, base, token="s3cret", timeout_s=5)
        assert put_report(preliminary, base, token="s3cret", timeout_s=5)[0] == "201"
        assert len(store.versions) == 1


def test_an_unreachable_server_is_transient() -> None:
    preliminary, _ = _reports()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(FhirUnavailable, match="unreachable"):
        put_report(preliminary, f"http://127.0.0.1:{port}", token=None, timeout_s=2)
