"""The listener's Prometheus metrics, counted where its handlers answer (services.listener.main
wires these in place of the plain handler and refusal counter)."""

from __future__ import annotations

import time

from pynetdicom import events

from services.listener import handlers
from services.listener.handlers import ListenerContext, handle_store
from services.listener.refusals import RefusalCounter
from shared.observability.metrics import (
    LISTENER_INSTANCES,
    LISTENER_REFUSALS,
    LISTENER_STORE_SECONDS,
)

STORE_OUTCOMES = {
    handlers.STATUS_SUCCESS: "stored",
    handlers.STATUS_OUT_OF_RESOURCES: "out_of_resources",
    handlers.STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS: "sop_mismatch",
    handlers.STATUS_CANNOT_UNDERSTAND: "cannot_understand",
    handlers.STATUS_CANNOT_DECODE: "cannot_decode",
    handlers.STATUS_HANDLER_FAILED: "handler_failed",
}


def observed_store(event: events.Event, context: ListenerContext) -> int:
    """EVT_C_STORE as handle_store answers it, counted by outcome and timed."""
    started = time.perf_counter()
    status = handle_store(event, context)
    LISTENER_STORE_SECONDS.observe(time.perf_counter() - started)
    LISTENER_INSTANCES.labels(outcome=STORE_OUTCOMES.get(status, f"0x{status:04X}")).inc()
    return status


class ObservedRefusalCounter(RefusalCounter):
    """Counts each refusal in this process's metrics too (the table holds every process's)."""

    def count(self, reason: str, remote_addr: str, calling_ae: str) -> None:
        super().count(reason, remote_addr, calling_ae)
        LISTENER_REFUSALS.labels(reason=reason).inc()
