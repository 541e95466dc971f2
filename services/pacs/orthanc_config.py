"""Render Orthanc 1.10.1's JSON configuration from our `Settings`.

Orthanc stands in for the hospital PACS: modalities store into it, and the routing plugin
(`route_stable_studies.py`, loaded through orthanc-python 4.0) forwards every stable study to
our AI node (the listener), skipping the SRs we send back. Everything Orthanc and the plugin need
is in this one file, so ops, the tests and the benchmark all run the same configuration.

    python -m services.pacs.orthanc_config --workdir var/orthanc --out var/orthanc/orthanc.json
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

from shared.config import Settings, get_settings
from shared.dicom.uids import MEDREGA_UID_ROOT

PYTHON_PLUGIN_PATH = Path("/usr/share/orthanc/plugins/libOrthancPython.so")
DICOMWEB_PLUGIN_PATH = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
POSTGRESQL_INDEX_PLUGIN_PATH = Path("/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so")
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
ROUTING_PLUGIN_SCRIPT = Path(__file__).resolve().parent / "route_stable_studies.py"

# Name of our AI node in Orthanc's DicomModalities (the plugin routes to /modalities/<this>/store).
AI_NODE_MODALITY = "medrega-ai"

# Our SR output carries SOP Instance UIDs under this root and this Manufacturer; the plugin must
# never route it back to the AI node (that would draft a report about our own report).
OWN_UID_ROOT = MEDREGA_UID_ROOT
# Matched exactly (case-insensitive): the phantom generator's "medrega-pacs phantom" images are
# input like any modality's and must be routed.
OWN_MANUFACTURER = "medrega-pacs"

# Instance-level user-defined metadata set by the plugin once an instance reached the AI node.
# Orthanc reserves 1024-65535 for user metadata; 7781 echoes our UID root.
ROUTED_METADATA_NAME = "MedregaRoutedToAi"
ROUTED_METADATA_ID = 7781

# Top-level key read by the plugin through orthanc.GetConfiguration().
ROUTING_CONFIG_KEY = "MedregaRouting"

# Orthanc accepts 4096-131072; its default (16 KiB) costs throughput when routing large studies.
MAXIMUM_PDU_LENGTH = 131_072


@dataclass(frozen=True)
class OrthancPorts:
    http: int
    dicom: int


def http_port_from_url(url: str) -> int:
    parsed = urlsplit(url)
    if parsed.port is not None:
        return parsed.port
    return 443 if parsed.scheme == "https" else 80


def render_orthanc_config(
    settings: Settings,
    workdir: Path,
    *,
    http_port: int | None = None,
    dicom_port: int | None = None,
    listener_host: str | None = None,
    listener_port: int | None = None,
    listener_ae_title: str | None = None,
    stable_age_s: int | None = None,
    checkpoint_tick_s: float = 5.0,
    plugin_script: Path = ROUTING_PLUGIN_SCRIPT,
    python_verbose: bool = False,
) -> dict[str, Any]:
    """Orthanc's configuration as a dict; keyword overrides win over `settings` (tests, bench)."""
    workdir = workdir.resolve()
    plugins = [str(PYTHON_PLUGIN_PATH)]
    if DICOMWEB_PLUGIN_PATH.exists():
        plugins.append(str(DICOMWEB_PLUGIN_PATH))

    config: dict[str, Any] = {
        "Name": "medrega-pacs",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        # Durability over speed: a C-STORE answered success is on disk (Orthanc >= 1.7.4 default).
        "SyncStorageArea": True,
        "StorageCompression": False,
        # --- HTTP: loopback only, always authenticated (the REST API exposes PHI) ---
        "HttpServerEnabled": True,
        "HttpPort": http_port
        if http_port is not None
        else http_port_from_url(settings.pacs_http_url),
        # Loopback only by default; a container deployment opens it to its private network.
        "RemoteAccessAllowed": settings.pacs_http_remote_access,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {settings.pacs_http_user: settings.secret("pacs_http_password")},
        "HttpDescribeErrors": True,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "WebDavEnabled": False,
        "ExecuteLuaEnabled": False,
        "MetricsEnabled": True,
        # Orthanc otherwise points its HTTPS client at the work dir (it makes no HTTPS calls
        # today; a peer added later should verify against the system's CAs).
        "HttpsVerifyPeers": True,
        "HttpsCACertificates": str(SYSTEM_CA_BUNDLE) if SYSTEM_CA_BUNDLE.exists() else "",
        # --- DICOM ---
        "DicomServerEnabled": True,
        "DicomAet": settings.pacs_ae_title,
        "DicomPort": dicom_port if dicom_port is not None else settings.pacs_port,
        "DicomCheckCalledAet": False,
        # A PACS takes images from any modality (and our SR back from the worker); storing only
        # adds data. Reading out (C-FIND/GET/MOVE) stays limited to registered modalities.
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "DicomScuTimeout": 30,
        "MaximumPduLength": MAXIMUM_PDU_LENGTH,
        "DicomModalitiesInDatabase": False,
        "DicomModalities": {
            AI_NODE_MODALITY: {
                "AET": listener_ae_title or settings.listener_ae_title,
                "Host": listener_host
                or settings.listener_advertised_host
                or settings.listener_host,
                "Port": listener_port if listener_port is not None else settings.listener_port,
                # The AI node receives studies and may send SRs back; it never queries the PACS.
                "AllowEcho": True,
                "AllowStore": True,
                "AllowFind": False,
                "AllowFindWorklist": False,
                "AllowGet": False,
                "AllowMove": False,
                "AllowStorageCommitment": False,
                # The listener keeps what it receives as received; let Orthanc send the stored
                # transfer syntax and transcode only if the listener refuses it.
                "AllowTranscoding": True,
                # With Orthanc's DICOM TLS on, studies reach the listener over TLS too.
                "UseDicomTls": settings.orthanc_tls_cert is not None,
            }
        },
        # Without this, text in any non-Latin-1 script (our Chinese names and reports) is lost
        # when Orthanc answers /tools/find and DICOMweb queries for files without (0008,0005).
        "DefaultEncoding": "Utf8",
        "StableAge": stable_age_s if stable_age_s is not None else settings.pacs_stable_age_s,
        # A duplicate SOP Instance UID keeps the first copy: overwriting would delete and
        # re-create the instance, dropping its "routed" metadata, so a modality re-sending a
        # study would be routed (and drafted) again. Corrected SRs get new SOP Instance UIDs.
        "OverwriteInstances": False,
        "UserMetadata": {ROUTED_METADATA_NAME: ROUTED_METADATA_ID},
        "LogExportedResources": False,
        # Orthanc's own logs must not carry PHI either (C-FIND queries etc.).
        "DeidentifyLogs": True,
        "DeidentifyLogsDicomVersion": "2021b",
        # Synchronous REST jobs (the plugin's routing) need a non-empty job history.
        "JobsHistorySize": 50,
        "ConcurrentJobs": 2,
        "SaveJobs": True,
        # --- plugins (orthanc-python 4.0 reads the top-level keys, not a "Python" section) ---
        "Plugins": plugins,
        "PythonScript": str(plugin_script.resolve()),
        "PythonVerbose": python_verbose,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False},
        ROUTING_CONFIG_KEY: {
            "TargetModality": AI_NODE_MODALITY,
            "OwnSopInstanceUidRoot": OWN_UID_ROOT,
            "OwnManufacturer": OWN_MANUFACTURER,
            "RoutedMetadata": ROUTED_METADATA_NAME,
            # Instances per C-STORE job: progress is recorded per batch, so a failure late in a
            # large study does not resend what already arrived.
            "BatchSize": 500,
            # Seconds between attempts when the AI node is down; the last value repeats.
            "RetryDelaysSeconds": [2, 5, 15, 60, 300],
            # How often an idle router records how far Orthanc's change log is fully routed
            # (its restart point).
            "CheckpointTickSeconds": checkpoint_tick_s,
        },
    }
    config.update(dicom_tls_options(settings))
    index = postgresql_index_options(settings)
    if index:
        config["Plugins"].append(str(POSTGRESQL_INDEX_PLUGIN_PATH))
        config.update(index)
    return config


def postgresql_index_options(settings: Settings) -> dict[str, Any]:
    """Orthanc's index in PostgreSQL (MEDREGA_ORTHANC_INDEX_DATABASE; Debian orthanc-postgresql
    4.0), the production option: SQLite's single writer and single file don't suit a hospital's
    archive. The files stay in StorageDirectory (the plugin's storage area is not enabled: large
    objects in PostgreSQL make backups and vacuum heavy). Same server and account as our
    database; the database itself must exist (Compose's postgres service creates it)."""
    if not settings.orthanc_index_database:
        return {}
    url = make_url(settings.database_url)
    return {
        "PostgreSQL": {
            "EnableIndex": True,
            "EnableStorage": False,
            "Host": url.host or "127.0.0.1",
            "Port": url.port or 5432,
            "Database": settings.orthanc_index_database,
            "Username": url.username or "postgres",
            "Password": url.password or "",
            # One Orthanc per index (the plugin's advisory lock); a second one fails to start
            # instead of sharing it unnoticed.
            "Lock": True,
            # The database may still be starting when Orthanc does (containers).
            "MaximumConnectionRetries": 30,
            "ConnectionRetryInterval": 2,
            "IndexConnectionsCount": 4,
        }
    }


def dicom_tls_options(settings: Settings) -> dict[str, Any]:
    """Orthanc's DICOM TLS (MEDREGA_ORTHANC_TLS_*): on, its DICOM port speaks TLS only and every
    caller (modalities, our worker's SR) must present a certificate signed by the trusted CA;
    the same certificate identifies Orthanc to the listener."""
    cert, key, ca = settings.orthanc_tls_cert, settings.orthanc_tls_key, settings.orthanc_tls_ca
    if cert is None or key is None or ca is None:  # Settings refuses a certificate without CA
        return {"DicomTlsEnabled": False}
    return {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(cert.resolve()),
        "DicomTlsPrivateKey": str(key.resolve()),
        "DicomTlsTrustedCertificates": str(ca.resolve()),
        "DicomTlsRemoteCertificateRequired": True,
    }


def write_orthanc_config(config: dict[str, Any], out_path: Path) -> Path:
    """Write atomically: a crashed render never leaves Orthanc half a configuration."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    temporary_path = out_path.with_name(out_path.name + ".tmp")
    # The file holds the REST password: readable by its owner only.
    descriptor = os.open(temporary_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    os.replace(temporary_path, out_path)
    return out_path


def ensure_work_directories(workdir: Path) -> None:
    for sub in ("storage", "index"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Render Orthanc's configuration (medrega-pacs)")
    parser.add_argument("--workdir", type=Path, required=True, help="Orthanc storage/index root")
    parser.add_argument("--out", type=Path, help="default: <workdir>/orthanc.json")
    add_override_arguments(parser)
    return parser


def add_override_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--http-port", type=int)
    parser.add_argument("--dicom-port", type=int)
    parser.add_argument("--listener-host")
    parser.add_argument("--listener-port", type=int)
    parser.add_argument("--listener-ae-title")
    parser.add_argument("--stable-age", type=int, help="Orthanc StableAge in seconds")
    parser.add_argument("--python-verbose", action="store_true")


def overrides_from_arguments(arguments: argparse.Namespace) -> dict[str, Any]:
    return {
        "http_port": arguments.http_port,
        "dicom_port": arguments.dicom_port,
        "listener_host": arguments.listener_host,
        "listener_port": arguments.listener_port,
        "listener_ae_title": arguments.listener_ae_title,
        "stable_age_s": arguments.stable_age,
        "python_verbose": arguments.python_verbose,
    }


def main(argv: list[str] | None = None) -> int:
    arguments = build_argument_parser().parse_args(argv)
    workdir: Path = arguments.workdir
    ensure_work_directories(workdir)
    config = render_orthanc_config(get_settings(), workdir, **overrides_from_arguments(arguments))
    out_path = write_orthanc_config(config, arguments.out or workdir / "orthanc.json")
    print(out_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
