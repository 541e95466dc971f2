"""Keep large image buffers on the heap for reuse instead of mapping fresh pages for each one.

glibc serves an allocation above its mmap threshold with a new mapping and unmaps it on free;
the threshold adapts up to 32 MB only. A 3000 × 2835 X-ray is 34 MB as float32, so every
temporary made while reading and preprocessing one (several per image) was a fresh mapping, its
34 MB faulted in page by page on first touch. Reading and preprocessing one such X-ray in a
worker thread took 83.6 ms with glibc's defaults and 44.4 ms with the two settings below
(ops/bench/large_buffers.py):
- the mmap threshold above the largest image temporaries, so freed buffers stay on the heap;
- one malloc arena. Each thread (Celery's pool, the reader pool) would otherwise get its own
  arena, made of heaps of at most 64 MB, where two such buffers don't fit, so they went back to
  fresh mappings.

The cost is memory kept: freed heap stays with the process (the top of the heap is returned only
past the trim threshold; free memory below it is not), about 190 MB more in that bench. An
operator's own choice wins: a MALLOC_* environment variable leaves that setting alone, and any
glibc.malloc tunable in GLIBC_TUNABLES leaves all of them alone (glibc reads both at start).
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD_BYTES = 128 << 20  # above a 4300 × 3500 detector's float32 image (60 MB)
TRIM_THRESHOLD_BYTES = 256 << 20  # free heap kept before any is returned to the system
SETTINGS = (  # the threshold first (see keep_large_buffers)
    ("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
    ("MALLOC_TRIM_THRESHOLD_", M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
    ("MALLOC_ARENA_MAX", M_ARENA_MAX, 1),
)


def keep_large_buffers() -> bool:
    """Apply the settings (call before the process starts its worker threads). False where the
    C library is not glibc, the operator set malloc tunables, or glibc refused a setting (those
    after it are then not applied)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it; musl and macOS differ)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("not glibc: malloc left at its defaults")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        log.info("GLIBC_TUNABLES sets malloc: left as the operator chose")
        return False
    for variable, parameter, value in SETTINGS:
        if variable in os.environ:
            continue  # the operator chose
        if not mallopt(parameter, value):
            # The threshold comes first: an older glibc that caps it (32 MB) refuses it, and the
            # other settings alone would freeze the threshold low, worse than the defaults.
            log.warning("glibc refused malloc setting %s=%d; the rest left alone", variable, value)
            return False
    return True
