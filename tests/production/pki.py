"""A certificate authority made by the test run (ops/demo_pki.sh: openssl), and its certificates."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from shared.config import REPO_ROOT

PKI_SCRIPT = REPO_ROOT / "ops" / "demo_pki.sh"
LOCAL_NAMES = "DNS:localhost,IP:127.0.0.1"


@dataclass(frozen=True)
class Pki:
    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    def issue(self, name: str, sans: str = LOCAL_NAMES) -> tuple[Path, Path]:
        """(certificate, key) for `name`, signed by this CA; made once per name."""
        cert, key = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        if not cert.exists():
            subprocess.run(
                [str(PKI_SCRIPT), str(self.directory), name, sans], check=True, timeout=60
            )
        return cert, key


def make_pki(directory: Path) -> Pki:
    subprocess.run([str(PKI_SCRIPT), str(directory)], check=True, timeout=60)
    return Pki(directory)
