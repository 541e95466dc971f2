"""Refused associations, counted in PostgreSQL (`listener_refusals`): one row per
(reason, source address, calling AE title) with a count and first/last times.

The association handler only bumps an in-memory tally (no database round trip on the path a
scanner or a misconfigured modality hammers); a thread adds the tallies to the rows every
second, in one transaction, and once more at stop. The tally holds at most MAX_KEYS distinct
peers between flushes; more fold into one `(overflow)` row, so a flood of invented AE titles
cannot grow memory or the table without bound. The web app's /metrics reports the totals by
reason (`medrega_listener_refused_associations_total`), the same for every listener process.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

import psycopg

from shared.db.session import libpq_url
from shared.log_safety import printable

logger = logging.getLogger(__name__)

MAX_KEYS = 1000
OVERFLOW = "(overflow)"
FLUSH_INTERVAL_S = 1.0

UPSERT = """
INSERT INTO listener_refusals (reason, remote_addr, calling_ae_title, count)
VALUES (%s, %s, %s, %s)
ON CONFLICT (reason, remote_addr, calling_ae_title)
DO UPDATE SET count = listener_refusals.count + EXCLUDED.count, last_at = now()
"""


class RefusalCounter:
    def __init__(self, database_url: str, flush_interval_s: float = FLUSH_INTERVAL_S) -> None:
        self._conninfo = libpq_url(database_url)
        self._interval = flush_interval_s
        self._lock = threading.Lock()
        self._tally: Counter[tuple[str, str, str]] = Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def count(self, reason: str, remote_addr: str, calling_ae: str) -> None:
        # Stored as they would be logged: printable, bounded (a peer chose the AE title).
        key = (reason, printable(remote_addr, 64), printable(calling_ae, 48))
        with self._lock:
            if key not in self._tally and len(self._tally) >= MAX_KEYS:
                key = (reason, OVERFLOW, OVERFLOW)
            self._tally[key] += 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="refusal-counter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            tally, self._tally = self._tally, Counter()
        if not tally:
            return
        try:
            with psycopg.connect(self._conninfo, application_name="medrega-listener") as conn:
                with conn.cursor() as cursor:
                    cursor.executemany(UPSERT, [(*key, n) for key, n in sorted(tally.items())])
        except psycopg.Error:
            # Counted again at the next flush; the refusals themselves were logged already.
            logger.exception("recording %d refused associations failed", sum(tally.values()))
            with self._lock:
                self._tally.update(tally)
