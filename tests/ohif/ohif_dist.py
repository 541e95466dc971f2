"""The OHIF Viewer as published on npm (`@ohif/app`, its built `dist/`), in an ignored cache.

Fetched once with npm's own client from the configured registry (`npm pack`), unpacked under
var/cache/ohif/app-<version>/ (var/ is git-ignored); every later run reuses it. Nothing is
loaded from a CDN when the viewer runs: the dist holds every script it needs.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from shared.config import REPO_ROOT

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"  # the 3.13 line the issue was reported on
CACHE_DIR = REPO_ROOT / "var" / "cache" / "ohif"
NPM_TIMEOUT_S = 600


def ohif_dist(version: str = OHIF_VERSION, cache_dir: Path = CACHE_DIR) -> Path:
    """The unpacked `dist/` of @ohif/app at `version`, fetched from the npm registry if absent."""
    dist = cache_dir / f"app-{version}" / "dist"
    if (dist / "index.html").is_file():
        return dist
    if shutil.which("npm") is None:
        raise RuntimeError("npm is missing: `make install` installs nodejs/npm")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as work:
        result = subprocess.run(
            ["npm", "pack", f"{OHIF_PACKAGE}@{version}", "--pack-destination", work, "--silent"],
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
            cwd=work,
        )
        if result.returncode != 0:
            raise RuntimeError(f"npm pack {OHIF_PACKAGE}@{version} failed: {result.stderr[-2000:]}")
        [tarball] = Path(work).glob("*.tgz")
        unpacked = Path(work) / "unpacked"
        with tarfile.open(tarball) as archive:
            archive.extractall(unpacked, filter="data")
        if not (unpacked / "package" / "dist" / "index.html").is_file():
            raise RuntimeError(f"{OHIF_PACKAGE}@{version} carries no built dist/index.html")
        target = cache_dir / f"app-{version}"
        shutil.rmtree(target, ignore_errors=True)
        (unpacked / "package").rename(target)  # same file system: atomic enough for a cache
    return dist


if __name__ == "__main__":  # `python -m tests.ohif.ohif_dist`: fetch it ahead of the tests
    print(ohif_dist())
