"""Serve a process's /metrics: its own metric group, its scrape-time collectors, and the
process's CPU/memory — or, under PROMETHEUS_MULTIPROC_DIR, every process's values from that
directory (prometheus_client's multiprocess mode, for forked workers that cannot each bind
the port).

Multiprocess mode needs the variable set, to an empty directory owned by that one service,
before the service starts (prometheus_client decides where values live when it is imported);
Celery prefork workers then report through the parent process's port, and each child's files
are marked dead when it exits (services/worker/observability.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# No `_created` series: a timestamp per counter child doubles the exposition, and dashboards
# use rate() and process_start_time_seconds for resets.
disable_created_metrics()


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def build_registry(
    metrics: Iterable[Collector], collectors: Iterable[Collector] = ()
) -> CollectorRegistry:
    registry = CollectorRegistry()
    path = multiprocess_dir()
    if path is not None:
        MultiProcessCollector(registry, path=path)  # our metrics, summed over the processes
    else:
        for metric in metrics:
            registry.register(metric)
        ProcessCollector(registry=registry)
    for collector in collectors:
        registry.register(collector)
    return registry


def serve_metrics(
    service: str,
    port: int,
    host: str,
    metrics: Iterable[Collector],
    collectors: Iterable[Collector] = (),
) -> tuple[WSGIServer, Thread] | None:
    """Start /metrics on host:port in a daemon thread; None when port is 0 (off) or taken (the
    service runs on without metrics, and says so: a second copy of a service on one host must
    be given its own port)."""
    if port == 0:
        return None
    registry = build_registry(metrics, collectors)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.warning("%s: metrics not served, %s:%d unavailable (%s)", service, host, port, exc)
        return None
    log.info("%s: metrics on http://%s:%d/metrics", service, host, port)
    return server, thread
