"""The whole pipeline, for real: Orthanc (+ plugin), listener, Celery worker, RIS sink.

Every component is the real one; only the ports, the database and the queue names are the
test run's own.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from model.phantoms.__main__ import write_phantom_study
from model.phantoms.demographics import synthesize_demographics
from model.phantoms.dicom_writer import WrittenStudy
from model.phantoms.splits import seeds
from model.phantoms.types import Domain
from ops.ris_sink import RisSink
from services.pacs.local_orthanc import RunningOrthanc, running_orthanc
from shared.config import Settings
from shared.db.models import Delivery, DeliveryState, Report, ReportStatus, Study
from tests.support.listener_process import RunningListener, free_port, start_listener
from tests.support.worker_process import (
    RunningWorker,
    delete_test_queues,
    queue_prefix,
    start_relay,
    start_worker,
)

STABLE_AGE_S = 1.0
TEST_AE = "MEDREGA_TEST"


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.25)


def storescu(paths: list[Path], port: int, called_ae: str) -> None:
    result = subprocess.run(
        ["storescu", "-aet", TEST_AE, "-aec", called_ae, "127.0.0.1", str(port)]
        + [str(p) for p in paths],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def phantom(
    domain: Domain,
    out: Path,
    *,
    chinese: bool | None = None,
    abnormal: bool = True,
    slices: int | None = None,
    max_side: int | None = None,
) -> WrittenStudy:
    """The first test-split phantom of `domain` matching the wishes (deterministic)."""
    from model.phantoms.generator import generate_study

    for seed in seeds("test", 400):
        if (
            chinese is not None
            and ("=" in synthesize_demographics(domain, seed).patient_name) != chinese
        ):
            continue
        if generate_study(domain, seed, n_slices=1, max_side=64).is_normal == abnormal:
            continue
        return write_phantom_study(domain, seed, out, n_slices=slices, max_side=max_side)
    raise AssertionError(f"no {domain} phantom with chinese={chinese} abnormal={abnormal}")


@dataclass
class Pipeline:
    engine: Engine
    storage_dir: Path
    listener: RunningListener
    worker_env: dict[str, str]
    log_dir: Path
    ris_port: int
    pacs_port: int
    orthanc: RunningOrthanc | None = None
    sink: RisSink | None = None
    workers: list[RunningWorker] = field(default_factory=list)

    def session(self) -> Session:
        return sessionmaker(self.engine, expire_on_commit=False)()

    def start_worker(self) -> RunningWorker:
        if not any(w.log_path.name == "relay.log" for w in self.workers):
            self.workers.append(start_relay(self.worker_env, self.log_dir / "relay.log"))
        worker = start_worker(self.worker_env, self.log_dir / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        return worker

    def start_sink(self) -> RisSink:
        self.sink = RisSink(self.log_dir / "ris-inbox", port=self.ris_port).start()
        return self.sink

    def study(self, study_uid: str) -> Study | None:
        with self.session() as session:
            return session.scalar(select(Study).where(Study.study_instance_uid == study_uid))

    def current_report(self, study_uid: str) -> Report | None:
        with self.session() as session:
            return session.scalar(
                select(Report)
                .join(Study)
                .where(
                    Study.study_instance_uid == study_uid,
                    Report.status != ReportStatus.SUPERSEDED,
                )
                .order_by(Report.version.desc())
            )

    def deliveries(self, study_uid: str) -> list[Delivery]:
        with self.session() as session:
            return list(
                session.scalars(
                    select(Delivery)
                    .join(Report)
                    .join(Study)
                    .where(Study.study_instance_uid == study_uid)
                    .order_by(Delivery.id)
                )
            )

    def delivered(self, study_uid: str) -> bool:
        deliveries = self.deliveries(study_uid)
        return len(deliveries) >= 2 and all(d.state == DeliveryState.DELIVERED for d in deliveries)

    def diagnostics(self) -> str:
        logs = [p for p in self.log_dir.glob("*.log")]
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in logs)


@pytest.fixture
def pipeline_factory(clean_db: Engine, tmp_path: Path) -> Iterator[Callable[..., Pipeline]]:
    """Builds a pipeline; `with_orthanc`/`with_sink`/`with_worker` choose what runs at first."""
    stack = ExitStack()
    prefix = queue_prefix()
    pipelines: list[Pipeline] = []

    def build(
        *, with_orthanc: bool = True, with_sink: bool = True, with_worker: bool = True,
        pacs_port: int | None = None,
    ) -> Pipeline:  # fmt: skip
        log_dir = tmp_path / "logs"
        log_dir.mkdir(exist_ok=True)
        storage = tmp_path / "storage"
        listener = start_listener(
            storage_dir=storage,
            stable_age_s=STABLE_AGE_S,
            allowed_aes=(Settings().pacs_ae_title, TEST_AE),
            log_path=log_dir / "listener.log",
        )
        stack.callback(listener.stop)
        orthanc = None
        if with_orthanc:
            orthanc = stack.enter_context(
                running_orthanc(
                    tmp_path / "orthanc",
                    Settings(),
                    listener_host=listener.host,
                    listener_port=listener.port,
                    listener_ae_title=listener.ae_title,
                    stable_age_s=1,
                )
            )
        ris_port = free_port()
        resolved_pacs_port = orthanc.dicom_port if orthanc else (pacs_port or free_port())
        worker_env = {
            "MEDREGA_QUEUE_PREFIX": prefix,
            "MEDREGA_STORAGE_DIR": str(storage),
            "MEDREGA_PACS_PORT": str(resolved_pacs_port),
            "MEDREGA_PACS_HTTP_URL": f"http://127.0.0.1:{orthanc.http_port}"
            if orthanc
            else "http://127.0.0.1:1",
            "MEDREGA_RIS_PORT": str(ris_port),
            "MEDREGA_RIS_TIMEOUT_S": "5",
        }
        pipeline = Pipeline(
            engine=clean_db,
            storage_dir=storage,
            listener=listener,
            worker_env=worker_env,
            log_dir=log_dir,
            ris_port=ris_port,
            pacs_port=resolved_pacs_port,
            orthanc=orthanc,
        )
        pipelines.append(pipeline)
        if with_sink:
            pipeline.start_sink()
        if with_worker:
            pipeline.start_worker()
        return pipeline

    yield build
    for pipeline in pipelines:
        for worker in pipeline.workers:
            worker.stop()
        if pipeline.sink is not None:
            pipeline.sink.stop()
    stack.close()
    delete_test_queues(prefix)
