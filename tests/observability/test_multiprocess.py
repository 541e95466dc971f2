"""Metrics where one service is several processes: a Celery prefork worker reports every child's
counts through the parent's port (PROMETHEUS_MULTIPROC_DIR), and a listener with two serving
processes has one port per process (the supervisor's, then one each)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import sessionmaker

from ops.ris_sink import RisSink
from shared.config import get_settings
from shared.db.models import Delivery
from tests.listener.conftest import storescu
from tests.listener.ct_files import write_ct_study
from tests.observability.conftest import drafted_studies, samples, scrape, value
from tests.support.listener_process import free_port, listener_process
from tests.support.worker_process import (
    delete_test_queues,
    queue_prefix,
    start_relay,
    start_worker,
)
from tests.worker.conftest import wait_for


def _free_run(length: int) -> int:
    """The first of `length` consecutive ports free right now."""
    for _ in range(50):
        base = free_port()
        try:
            probes = []
            for port in range(base, base + length):
                probe = socket.socket()
                probe.bind(("127.0.0.1", port))
                probes.append(probe)
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
        return base
    raise RuntimeError(f"no {length} consecutive free ports")


def _total(exposition: str, name: str) -> float:
    return sum(v for (sample, _), v in samples(exposition).items() if sample == name)


def test_a_prefork_worker_reports_its_children_through_one_port(
    clean_db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = queue_prefix() + "prefork-"  # not the pipeline tests' queues
    with RisSink(tmp_path / "ris").start() as sink:
        monkeypatch.setenv("MEDREGA_QUEUE_PREFIX", prefix)
        monkeypatch.setenv("MEDREGA_RIS_PORT", str(sink.port))
        get_settings.cache_clear()
        factory = sessionmaker(clean_db, expire_on_commit=False)
        drafted_studies(clean_db, 3)
        multiproc = tmp_path / "prom"
        multiproc.mkdir()
        port = free_port()
        worker = start_worker(
            {
                "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
                "MEDREGA_METRICS_PORT_DELIVERY_WORKER": str(port),
            },
            tmp_path / "delivery.log",
            queues=("delivery",),
            pool="prefork",
            concurrency=2,
        )
        # The relay as its own process, like the worker: the worker module's queue names are
        # fixed when it is first imported, which in a full test run is under another prefix.
        relay = start_relay({}, tmp_path / "relay.log")
        try:
            with factory() as session:
                # Recorded by the drafts; each is attempted only once the relay has published it.
                recorded = int(session.scalar(select(func.count(Delivery.id))) or 0)
            assert recorded >= 6  # an SR and an ORU per study, at least

            def attempted() -> int:
                with factory() as session:
                    total = session.scalar(select(func.sum(Delivery.attempts)))
                    return int(total or 0) if int(total or 0) >= recorded else 0

            attempts = wait_for(attempted, 120, "every delivery attempted")
            exposition = wait_for(
                lambda: (
                    (text := scrape(port))
                    and _total(text, "medrega_delivery_attempts_total") >= attempts
                    and text
                ),
                30,
                "the children's counts at the parent's port",
            )
        finally:
            relay.stop()
            worker.stop()
            delete_test_queues(prefix)
            get_settings.cache_clear()
    assert _total(exposition, "medrega_delivery_attempts_total") == attempts
    assert value(exposition, "medrega_delivery_attempts_total", kind="hl7", state="delivered") == 3
    assert len(list(multiproc.glob("counter_*.db"))) >= 2  # more than one process counted


def test_each_listener_process_has_its_own_metrics_port(
    clean_db: Engine, storage_dir: Path, tmp_path: Path
) -> None:
    base = _free_run(3)
    studies = [write_ct_study(tmp_path / f"ct{n}", 1, size=16) for n in range(6)]
    with listener_process(
        storage_dir=storage_dir,
        processes=2,
        env={"MEDREGA_METRICS_PORT_LISTENER": str(base)},
    ) as listener:
        for study in studies:  # one association each: the kernel spreads them over both
            assert storescu(listener, study.files).returncode == 0
        children = [scrape(base + 1), scrape(base + 2)]
        supervisor = wait_for(
            lambda: (
                (text := scrape(base))
                and value(text, "medrega_received_to_stable_seconds_count") >= 6
                and text
            ),
            60,
            "the supervisor's sweeper to declare the studies stable",
        )
    stored = [value(c, "medrega_listener_instances_total", outcome="stored") for c in children]
    assert sum(stored) == 6
    assert value(supervisor, "medrega_listener_instances_total", outcome="stored") == 0
