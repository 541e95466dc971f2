"""TLS client contexts for our outgoing connections (SR to the PACS, ORU to the RIS).

One place decides how we verify a peer: TLS 1.2 or later, the peer's certificate checked against
the configured CA file (or the system's CAs) and its host name; our own certificate is offered
when one is configured (mutual TLS, which DICOM TLS peers such as Orthanc ask for by default).
"""

from __future__ import annotations

import ssl
from pathlib import Path


def client_tls_context(
    ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A verifying client context; raises FileNotFoundError/ssl.SSLError on unusable files."""
    for path in (ca_file, cert_file, key_file):
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"TLS file not found: {path}")
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None and key_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context
