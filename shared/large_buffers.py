"""Keep large image buffers on the heap for reuse instead of mapping fresh pages for each one.

glibc serves an allocation above its mmap threshold with a new mapping and unmaps it on free;
the threshold adapts up to 32 MB only. A 3000 × 2835 X-ray is 34 MB as float32, so every
temporary made while reading and preprocessing one (several per image) was a fresh mapping whose
8,000-odd pages fault in on first touch: about half of `preprocess`'s time on such an image
(53 → 25 ms in a one-off loop on the development machine). Two settings fix it:
- the mmap threshold above the largest image temporaries, so freed buffers stay on the heap;
- one malloc arena. Each thread (Celery's pool, the reader pool) would otherwise get its own
  arena, made of heaps of at most 64 MB, where two such buffers don't fit, so they went back to
  fresh mappings.

The cost is memory kept: up to the trim threshold of free heap stays in the process instead of
going back to the system. An operator's own MALLOC_* environment variables win (glibc reads
them at start; this leaves those settings alone).
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
SETTINGS = (
    ("MALLOC_ARENA_MAX", M_ARENA_MAX, 1),
    ("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
    ("MALLOC_TRIM_THRESHOLD_", M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
)


def keep_large_buffers() -> bool:
    """Apply the settings (call before the process starts its worker threads). False where the
    C library is not glibc or refused them; the process then runs with its defaults."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it; musl and macOS differ)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("not glibc: malloc left at its defaults")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    applied = True
    for variable, parameter, value in SETTINGS:
        if variable in os.environ:
            continue  # the operator chose
        applied = bool(mallopt(parameter, value)) and applied
    if not applied:
        log.warning("glibc refused a malloc setting; large buffers may be mapped afresh")
    return applied
