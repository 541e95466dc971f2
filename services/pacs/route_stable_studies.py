"""orthanc-python 4.0 plugin: route every stable study to the AI node, except our own SR output.

Loaded by Orthanc (`PythonScript` in the configuration rendered by `orthanc_config.py`), run by
Debian's system Python 3.11: standard library and `orthanc` only. Outside Orthanc the module
still imports (without registering anything) so the decision functions can be unit tested.

Flow:
- Orthanc calls `on_change` on its single change thread. For STABLE_STUDY we only put the study
  id on a queue and return: anything slow there would stall every other change in Orthanc.
- One worker thread takes studies off the queue, lists their series, skips series that are our
  own output (SOP Instance UID under our UID root, or Manufacturer 'medrega-pacs', read from a
  representative instance), skips instances already carrying the "routed" metadata, and sends
  the rest with `/modalities/<ai>/store` as asynchronous Orthanc jobs, one batch at a time.
- The worker polls each job. Only when Orthanc reports the job `Success` are the instances of
  that batch marked routed (instance metadata). A failed batch is retried later, with backoff.

Why asynchronous jobs polled from our own thread rather than `"Synchronous": true`:
the job shows up in Orthanc's /jobs while it runs (ops can see and cancel it), and our thread
sleeps between short REST calls instead of sitting inside one long C call for the whole
transfer, so nothing depends on whether that call releases the Python GIL (the change callback
needs the GIL to run).

Why the metadata mark: STABLE_STUDY fires again for every late instance and for our own SR
stored back into the PACS. With the mark, such a second pass sends only what was never sent:
nothing for our SR (so no second draft), exactly the new instance for a late one.

Restarts: the queue and the retry schedule live in memory, and Orthanc never fires STABLE_STUDY
for a study that was still settling when it stopped. So the worker keeps a checkpoint (an Orthanc
global property): a sequence number of Orthanc's own change log up to which everything has been
routed, advanced only while the router is idle with nothing pending. On ORTHANC_STARTED it walks
the change log from the checkpoint and re-checks every study that changed since, one StableAge
later. A re-check of an already routed study sends nothing (metadata marks), so being generous
here costs a few REST calls, never a duplicate draft.

Logs carry Orthanc resource ids (hashes) and counts only, never names, UIDs or other PHI.
"""

from __future__ import annotations

import heapq
import json
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

try:
    import orthanc  # provided by the plugin inside Orthanc only
except ModuleNotFoundError:  # imported by our unit tests
    orthanc = None

ROUTING_CONFIG_KEY = "MedregaRouting"
STATUS_URI = "/medrega/routing"
LOG_PREFIX = "medrega-routing: "
JOB_POLL_INTERVAL_S = 0.2
# A store job that neither succeeds nor fails for this long (paused by hand, stuck peer) is
# treated as failed and retried; the resend is harmless (the listener is idempotent).
JOB_MAX_WAIT_S = 3600.0
RECENT_STUDIES_KEPT = 1000
# Orthanc global property (ids >= 1024 belong to plugins): the change-log checkpoint.
CHECKPOINT_PROPERTY = 7781
CHANGES_PAGE_SIZE = 1000
# Queue item asking the worker to recover after a restart; Orthanc ids are hex and dashes only.
RECOVERY_REQUEST = "<recover>"


# ---------------------------------------------------------------------------------------------
# Plain decision functions (no Orthanc needed)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoutingSettings:
    target_modality: str
    own_sop_instance_uid_root: str
    own_manufacturer: str
    routed_metadata: str
    batch_size: int = 500
    retry_delays_s: tuple[float, ...] = (2.0, 5.0, 15.0, 60.0, 300.0)
    stable_age_s: float = 60.0  # Orthanc's StableAge: recovery waits this long before routing
    checkpoint_tick_s: float = 5.0  # an idle worker wakes up this often to advance the checkpoint


def parse_routing_settings(configuration: dict[str, Any]) -> RoutingSettings:
    """Read our key from Orthanc's whole configuration; a missing key is a deployment error."""
    section = configuration.get(ROUTING_CONFIG_KEY)
    if not isinstance(section, dict):
        raise ValueError(f"Orthanc configuration lacks the {ROUTING_CONFIG_KEY!r} section")
    root = str(section["OwnSopInstanceUidRoot"])
    if not root.endswith("."):
        # "1.2.3" must not match "1.2.34...": compare against the root plus its separator.
        root += "."
    delays = tuple(float(value) for value in section.get("RetryDelaysSeconds", [2, 5, 15, 60]))
    return RoutingSettings(
        target_modality=str(section["TargetModality"]),
        own_sop_instance_uid_root=root,
        own_manufacturer=str(section["OwnManufacturer"]),
        routed_metadata=str(section["RoutedMetadata"]),
        batch_size=max(1, int(section.get("BatchSize", 500))),
        retry_delays_s=delays or (5.0,),
        stable_age_s=float(configuration.get("StableAge", 60)),
        checkpoint_tick_s=max(0.1, float(section.get("CheckpointTickSeconds", 5))),
    )


def is_own_output(instance_tags: dict[str, Any], settings: RoutingSettings) -> bool:
    """True for what we produced (our SR): our UID root, or our Manufacturer."""
    sop_instance_uid = str(instance_tags.get("SOPInstanceUID") or "")
    manufacturer = str(instance_tags.get("Manufacturer") or "").strip()
    return sop_instance_uid.startswith(settings.own_sop_instance_uid_root) or (
        manufacturer.lower() == settings.own_manufacturer.lower()
    )


def unrouted_instances(
    instance_ids: Iterable[str], routed_instance_ids: Iterable[str]
) -> list[str]:
    """Instances not yet sent, in their original order."""
    already = set(routed_instance_ids)
    return [instance_id for instance_id in instance_ids if instance_id not in already]


def batches(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


def retry_delay_s(attempt: int, delays: Sequence[float]) -> float:
    """Delay before attempt number `attempt + 1` (attempt counts failures so far, from 1)."""
    index = min(max(attempt, 1), len(delays)) - 1
    return float(delays[index])


def changed_resources(changes: Iterable[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """(studies, instances) named by Orthanc change-log entries that may need routing."""
    studies: set[str] = set()
    instances: set[str] = set()
    for change in changes:
        change_type = change.get("ChangeType")
        if change_type in ("StableStudy", "NewStudy"):
            studies.add(str(change["ID"]))
        elif change_type == "NewInstance":  # a late instance into a known study
            instances.add(str(change["ID"]))
    return studies, instances


def job_outcome(job: dict[str, Any]) -> str | None:
    """'success', 'failure', or None while the Orthanc job is still pending/running/paused."""
    state = str(job.get("State", ""))
    if state == "Success":
        return "success"
    if state == "Failure":
        return "failure"
    return None


# ---------------------------------------------------------------------------------------------
# Routing against Orthanc's REST API (through callables, so the logic does not import orthanc)
# ---------------------------------------------------------------------------------------------


class StudyVanished(Exception):
    """The study was deleted between STABLE_STUDY and our look at it: nothing to route."""


class RoutingFailed(Exception):
    """The AI node did not take a batch (down, refused, timed out): retry later."""


class RouterStopping(Exception):
    """Orthanc is shutting down: stop waiting on a job; recovery picks the study up later."""


@dataclass
class OrthancRest:
    get: Callable[[str], bytes]
    post: Callable[[str, bytes], bytes]
    put: Callable[[str, bytes], bytes]

    def get_json(self, uri: str) -> Any:
        return json.loads(self.get(uri))

    def post_json(self, uri: str, body: dict[str, Any]) -> Any:
        return json.loads(self.post(uri, json.dumps(body).encode("utf-8")))


@dataclass
class StudyOutcome:
    routed: int = 0
    already_routed: int = 0
    skipped_own_output: int = 0


def route_study(
    rest: OrthancRest,
    settings: RoutingSettings,
    study_id: str,
    log: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> StudyOutcome:
    """Send the study's not-yet-routed, not-our-own instances to the AI node."""
    try:
        series_list = rest.get_json(f"/studies/{study_id}/series")
    except Exception as error:  # orthanc.OrthancException: unknown resource
        raise StudyVanished(study_id) from error

    outcome = StudyOutcome()
    to_route: list[str] = []
    for series in series_list:
        instance_ids: list[str] = list(series.get("Instances", []))
        if not instance_ids:
            continue
        # One representative instance decides for the series: our SR series hold only our SRs.
        representative = rest.get_json(f"/instances/{instance_ids[0]}/simplified-tags")
        if is_own_output(representative, settings):
            outcome.skipped_own_output += len(instance_ids)
            continue
        routed_here = [
            instance_id
            for instance_id in instance_ids
            if settings.routed_metadata in rest.get_json(f"/instances/{instance_id}/metadata")
        ]
        outcome.already_routed += len(routed_here)
        to_route.extend(unrouted_instances(instance_ids, routed_here))

    for batch in batches(to_route, settings.batch_size):
        send_batch(rest, settings, batch, sleep)
        mark_routed(rest, settings, batch)
        outcome.routed += len(batch)
        log(f"study {study_id}: {len(batch)} instance(s) stored to {settings.target_modality}")
    return outcome


def send_batch(
    rest: OrthancRest,
    settings: RoutingSettings,
    instance_ids: list[str],
    sleep: Callable[[float], None],
) -> None:
    job = rest.post_json(
        f"/modalities/{settings.target_modality}/store",
        {"Resources": instance_ids, "Synchronous": False, "Permissive": False},
    )
    job_id = str(job["ID"])
    deadline = time.monotonic() + JOB_MAX_WAIT_S
    while True:
        state = rest.get_json(f"/jobs/{job_id}")
        outcome = job_outcome(state)
        if outcome == "success":
            return
        if outcome == "failure":
            raise RoutingFailed(
                f"job {job_id} failed: {state.get('ErrorDescription', '')} "
                f"({state.get('ErrorCode', '')})"
            )
        if time.monotonic() > deadline:
            raise RoutingFailed(f"job {job_id} still {state.get('State')} after {JOB_MAX_WAIT_S}s")
        sleep(JOB_POLL_INTERVAL_S)


def mark_routed(rest: OrthancRest, settings: RoutingSettings, instance_ids: list[str]) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()).encode("ascii")
    for instance_id in instance_ids:
        rest.put(f"/instances/{instance_id}/metadata/{settings.routed_metadata}", stamp)


# ---------------------------------------------------------------------------------------------
# The queue and its worker thread
# ---------------------------------------------------------------------------------------------


@dataclass
class StudyRecord:
    """What the status endpoint reports per study (Orthanc ids and counts only, no PHI)."""

    handled: int = 0
    routed: int = 0
    already_routed: int = 0
    skipped_own_output: int = 0
    failures: int = 0
    last_outcome: str = ""
    last_handled_at: float = 0.0


@dataclass
class StableStudyRouter:
    rest: OrthancRest
    settings: RoutingSettings
    # Orthanc logs INFO only with --verbose; one line per routed study is worth a WARNING-level
    # line in the default log (ops reads it), failures go to ERROR.
    log_event: Callable[[str], None]
    log_failure: Callable[[str], None]
    # The change-log checkpoint, persisted by Orthanc (None: never written).
    load_checkpoint: Callable[[], int | None] = lambda: None
    store_checkpoint: Callable[[int], None] = lambda sequence: None
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)
    _queued: set[str] = field(default_factory=set)
    _retries: list[tuple[float, str]] = field(default_factory=list)  # heap (due, study)
    _retry_scheduled: set[str] = field(default_factory=set)  # at most one entry per study
    _failed_attempts: dict[str, int] = field(default_factory=dict)
    _records: OrderedDict[str, StudyRecord] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _checkpoint_candidate: int | None = None
    _checkpoint: int | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="medrega-routing", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def submit(self, study_id: str) -> None:
        """Called on Orthanc's change thread: constant time, never blocks."""
        with self._lock:
            if study_id in self._queued:
                return
            self._queued.add(study_id)
        self._queue.put(study_id)

    def request_recovery(self) -> None:
        """Called on Orthanc's change thread at ORTHANC_STARTED: the worker does the work."""
        self._queue.put(RECOVERY_REQUEST)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "target_modality": self.settings.target_modality,
                "queued": len(self._queued),
                "retry_scheduled": len(self._retries),
                "checkpoint": self._checkpoint,
                "studies": {key: vars(record).copy() for key, record in self._records.items()},
            }

    def _run(self) -> None:
        while not self._stopping.is_set():
            item = self._next_item()
            try:
                if item is None:
                    self._on_idle_tick()
                elif item == RECOVERY_REQUEST:
                    self._recover()
                else:
                    self._handle(item)
            except Exception as error:  # the worker must survive anything
                self.log_failure(f"{LOG_PREFIX}{item or 'idle tick'}: {type(error).__name__}")

    def _next_item(self) -> str | None:
        """The next study (a due retry first), RECOVERY_REQUEST, or None after an idle tick."""
        with self._lock:
            if self._retries and self._retries[0][0] <= time.monotonic():
                _, retry_study_id = heapq.heappop(self._retries)
                self._retry_scheduled.discard(retry_study_id)
                return retry_study_id
            wait_s = self.settings.checkpoint_tick_s
            if self._retries:
                wait_s = min(wait_s, max(0.0, self._retries[0][0] - time.monotonic()))
        try:
            item = self._queue.get(timeout=wait_s)
        except queue.Empty:
            return None
        if item is not None:
            with self._lock:
                # Dequeued before routing starts: a STABLE_STUDY arriving during routing (a
                # late instance) queues the study again instead of being swallowed.
                self._queued.discard(item)
        return item

    def _schedule(self, study_id: str, delay_s: float) -> bool:
        """Put the study on the timed schedule unless it is already there (caller holds lock)."""
        if study_id in self._retry_scheduled:
            return False
        self._retry_scheduled.add(study_id)
        heapq.heappush(self._retries, (time.monotonic() + delay_s, study_id))
        return True

    def _handle(self, study_id: str) -> None:
        record = self._record(study_id)
        try:
            outcome = route_study(
                self.rest, self.settings, study_id, self._log_progress, self._sleep_unless_stopping
            )
        except RouterStopping:
            return
        except StudyVanished:
            self._finish(study_id, record, "vanished", StudyOutcome())
            return
        except Exception as error:
            # RoutingFailed, or an Orthanc REST error mid-study: retry the study later.
            with self._lock:
                attempt = self._failed_attempts.get(study_id, 0) + 1
                self._failed_attempts[study_id] = attempt
                delay = retry_delay_s(attempt, self.settings.retry_delays_s)
                self._schedule(study_id, delay)
                record.failures += 1
                record.handled += 1
                record.last_outcome = "retry_scheduled"
                record.last_handled_at = time.time()
            self.log_failure(
                f"{LOG_PREFIX}study {study_id}: routing failed (attempt {attempt}, "
                f"{type(error).__name__}: {error}); retry in {delay:.0f}s"
            )
            return
        self._finish(study_id, record, "routed" if outcome.routed else "nothing_to_route", outcome)
        self.log_event(
            f"{LOG_PREFIX}study {study_id}: routed {outcome.routed}, already routed "
            f"{outcome.already_routed}, own output skipped {outcome.skipped_own_output}"
        )

    def _on_idle_tick(self) -> None:
        """Advance the checkpoint to the change-log position seen at the previous idle tick.

        One tick of lag: a change logged just before we read `Last` may not have reached our
        callback yet; by the next tick (seconds later) it has, and has been handled, or the
        router would not be idle.
        """
        with self._lock:
            busy = bool(self._queued or self._retries or self._failed_attempts)
        if busy:
            self._checkpoint_candidate = None
            return
        last = int(self.rest.get_json("/changes?last")["Last"])
        candidate = self._checkpoint_candidate
        if candidate is not None and (self._checkpoint is None or candidate > self._checkpoint):
            self.store_checkpoint(candidate)
            with self._lock:
                self._checkpoint = candidate
        self._checkpoint_candidate = last

    def _recover(self) -> None:
        """Re-check every study the change log names after the checkpoint (after a restart)."""
        checkpoint = self.load_checkpoint()
        if checkpoint is None:
            # First start with this plugin: nothing was ever pending; start from here.
            checkpoint = int(self.rest.get_json("/changes?last")["Last"])
            self.store_checkpoint(checkpoint)
            with self._lock:
                self._checkpoint = checkpoint
            return
        with self._lock:
            self._checkpoint = checkpoint
        studies: set[str] = set()
        since = checkpoint
        while True:
            page = self.rest.get_json(f"/changes?since={since}&limit={CHANGES_PAGE_SIZE}")
            page_studies, page_instances = changed_resources(page.get("Changes", []))
            studies |= page_studies
            for instance_id in page_instances:
                try:
                    studies.add(str(self.rest.get_json(f"/instances/{instance_id}/study")["ID"]))
                except Exception:  # deleted since: nothing to route
                    continue
            since = int(page.get("Last", since))
            if page.get("Done", True) or not page.get("Changes"):
                break
        with self._lock:
            # One StableAge from now: a study that was still arriving when Orthanc stopped gets
            # the same settling time it would have had.
            scheduled = sum(self._schedule(s, self.settings.stable_age_s) for s in studies)
        self.log_event(
            f"{LOG_PREFIX}recovery from change {checkpoint}: {scheduled} study(ies) to re-check"
        )

    def _sleep_unless_stopping(self, seconds: float) -> None:
        # Never keep polling a job while Orthanc shuts down under us.
        if self._stopping.wait(seconds):
            raise RouterStopping()

    def _log_progress(self, message: str) -> None:
        self.log_event(LOG_PREFIX + message)

    def _record(self, study_id: str) -> StudyRecord:
        with self._lock:
            record = self._records.pop(study_id, None) or StudyRecord()
            self._records[study_id] = record  # most recent last
            while len(self._records) > RECENT_STUDIES_KEPT:
                self._records.popitem(last=False)
            return record

    def _finish(
        self, study_id: str, record: StudyRecord, outcome_name: str, outcome: StudyOutcome
    ) -> None:
        with self._lock:
            self._failed_attempts.pop(study_id, None)
            record.handled += 1
            record.routed += outcome.routed
            record.already_routed += outcome.already_routed
            record.skipped_own_output += outcome.skipped_own_output
            record.last_outcome = outcome_name
            record.last_handled_at = time.time()


# ---------------------------------------------------------------------------------------------
# Glue to Orthanc (runs only inside Orthanc)
# ---------------------------------------------------------------------------------------------

_router: StableStudyRouter | None = None


def on_change(change_type: Any, level: Any, resource_id: str) -> None:
    # Orthanc's single change thread: enqueue and return, nothing else.
    if _router is None:
        return
    if change_type == orthanc.ChangeType.STABLE_STUDY:
        _router.submit(resource_id)
    elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
        _router.request_recovery()
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
        _router.stop()


def load_checkpoint() -> int | None:
    value = orthanc.GetGlobalProperty(CHECKPOINT_PROPERTY, "")
    return int(value) if value else None


def store_checkpoint(sequence: int) -> None:
    orthanc.SetGlobalProperty(CHECKPOINT_PROPERTY, str(sequence))


def on_status_request(output: Any, uri: str, **request: Any) -> None:
    if request.get("method") != "GET":
        output.SendMethodNotAllowed("GET")
        return
    body = json.dumps(_router.status() if _router else {"error": "routing disabled"}, indent=1)
    output.AnswerBuffer(body, "application/json")


def install() -> None:
    global _router
    try:
        settings = parse_routing_settings(json.loads(orthanc.GetConfiguration()))
    except (ValueError, KeyError) as error:
        # Refuse to route with a broken configuration, loudly, rather than guess a target.
        orthanc.LogError(f"{LOG_PREFIX}disabled: {error}")
        return
    rest = OrthancRest(get=orthanc.RestApiGet, post=orthanc.RestApiPost, put=orthanc.RestApiPut)
    _router = StableStudyRouter(
        rest=rest,
        settings=settings,
        log_event=orthanc.LogWarning,
        log_failure=orthanc.LogError,
        load_checkpoint=load_checkpoint,
        store_checkpoint=store_checkpoint,
    )
    _router.start()
    orthanc.RegisterOnChangeCallback(on_change)
    orthanc.RegisterRestCallback(STATUS_URI, on_status_request)
    orthanc.LogWarning(f"{LOG_PREFIX}routing stable studies to {settings.target_modality!r}")


if orthanc is not None:
    install()
