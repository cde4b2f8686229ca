"""The Conveyor operator: kopf watches, one work queue, and the engine deciding every step.

kopf supplies the watches (TrainingPipelines, and the Jobs and Pods the operator created) and its
event loop; the reconcile itself is the controller-runtime pattern, as in Kubeflow Trainer's thin
reconcile: each change enqueues the pipeline's key, a few workers take keys (one key is never
processed twice at once), and a step is

    GET the pipeline -> observe its children (the workloads `active_workloads(status)` names) ->
    engine.reconcile -> PATCH /status (only when it changed) -> carry out the actions on the
    pipeline's executor (`protocol.carry_out`) -> requeue after `requeue_after` or the resync interval.

Why these choices:
- kopf's event handlers, not its daemons or change handlers: those need finalizers and kopf's own
  annotations on the object; with plain event watches a pipeline deleted while the operator is down
  is simply gone, and the garbage collector removes its children through owner references.
- Status is written BEFORE the actions are applied. A crash in between leaves a workload that status
  calls started but that has no Job: the executor reports it `lost` and the engine starts its next
  attempt. The other order could re-ask Optuna for a trial whose Job already runs with other params.
  Everything comes from status, so a restarted operator continues every pipeline where it was.
- New pipelines first. A pipeline's first step decides from the spec alone (the prepare Job; no
  trial asked), so repeating it after a crash is a no-op on the server. It therefore applies its
  Job at once, takes the body its watch event delivered instead of a GET (only this operator writes
  status, and the body has none yet), and leaves its status to the next step, at most
  `FIRST_STATUS_DELAY` later, which starts from the held decision. Measured on the test bed: every
  status write is an event in the API server's one watch stream for TrainingPipelines, and during
  a burst of creations the first-step writes queued the other pipelines' ADDED events behind them.
- Events that cannot change a decision are dropped: a Job's or Pod's ADDED (this operator just
  created it, or its Job did: nothing has happened to it yet) and a pipeline's MODIFIED whose status
  already reflects its generation (this operator's own status write, or a metadata edit).
- All Kubernetes I/O is synchronous client code run in worker threads (`asyncio.to_thread`), so the
  event loop stays free for watches and the progress endpoint.
- High availability (`OperatorConfig.leader_election`, the chart's default): every replica runs its
  watches, but only the holder of a Lease (`leader.Elector`) has a work queue; the others drop
  events, so a standby's watches are warm and a hand-over costs no new connections. A new leader
  lists every pipeline and reconciles each once (what happened meanwhile is all in status and in
  the cluster); a leader that loses its Lease cancels its workers at once, and a step still in a
  thread checks `fence` before each write (`leader` explains why that is before anyone else leads).
  Epochs reach only the leader's store: a standby forwards progress POSTs to the endpoint the leader
  advertises on its Lease (statusserver), and answers 503 only while no leader is reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from conveyor.operator.api import GROUP, PLURAL, VERSION, rules
from conveyor.operator.api.resource import ManifestError, parse
from conveyor.operator.api.status import PipelineStatus
from conveyor.operator.engine import active_workloads, reconcile
from conveyor.operator.executors.protocol import carry_out
from conveyor.operator.kubernetes import builders, leader
from conveyor.operator.kubernetes.executor import PATHS, Api, ApiError, KubernetesExecutor, owner_of
from conveyor.operator.kubernetes.metrics import Metrics
from conveyor.operator.kubernetes.statusserver import (
    ProgressServer,
    ProgressStore,
    ProgressTLS,
    progress_tls,
    serve,
)

log = logging.getLogger("conveyor.operator")

Key = tuple[str, str]  # namespace, name
FINISHED = ("Succeeded", "Failed")
FIRST_STATUS_DELAY = 0.5  # seconds a new pipeline's first status may wait for its second step


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty: cluster-wide
    image: str = builders.DEFAULT_IMAGE
    image_pull_policy: str | None = None
    progress_url: str | None = None  # what pods POST to; None: no progress endpoint
    progress_port: int = 8081
    progress_tls_secret: str | None = None  # NAMESPACE/NAME of the progress CA (https progress_url)
    metrics_port: int | None = 8080
    health_port: int | None = 8082
    resync_seconds: float = 300.0  # a safety net: watches on Jobs, Pods and Deployments drive changes
    workers: int = 16
    kubeconfig: str | None = None
    leader_election: leader.Candidacy | None = None  # None: this replica always reconciles


class Fenced(Exception):
    """This replica stopped leading while a reconcile step was in flight: it must not write."""


def _always() -> bool:
    return True


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf deep-copies every object it sees as the base for its change handlers' diffs; this
    operator has none (it reconciles on events), so it keeps nothing. The copies were a fifth of the
    operator's CPU during a burst of new pipelines."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def api_client(kubeconfig: str | None = None, pool_size: int = 32) -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    # One kept-alive connection per reconcile thread (the default keeps 5 per CPU and opens, then
    # drops, a new TLS connection for every request beyond that).
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


@dataclass
class Controller:
    """The work queue and the reconcile step for every pipeline the operator watches."""

    api: Api
    config: OperatorConfig
    metrics: Metrics = field(default_factory=Metrics)
    store: ProgressStore = field(default_factory=ProgressStore)
    queue: asyncio.PriorityQueue[tuple[int, int, Key]] | None = None
    sequence: int = 0
    queued: set[Key] = field(default_factory=set)
    running: set[Key] = field(default_factory=set)
    dirty: set[Key] = field(default_factory=set)
    timers: dict[Key, asyncio.TimerHandle] = field(default_factory=dict)
    names: dict[tuple[str, str], str] = field(default_factory=dict)  # (ns, label value) -> name
    statuses: dict[Key, PipelineStatus] = field(default_factory=dict)
    unseen: dict[Key, dict[str, Any]] = field(default_factory=dict)  # new pipelines' latest bodies
    held: dict[Key, PipelineStatus] = field(default_factory=dict)  # first steps' statuses, unwritten
    loop: asyncio.AbstractEventLoop | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    fence: Callable[[], bool] = _always  # whether this replica may still write (leader election)
    tls: ProgressTLS | None = None  # the progress endpoint's (statusserver.progress_tls)

    def __post_init__(self) -> None:
        self.executor = KubernetesExecutor(
            self.api,
            builders.Settings(
                image=self.config.image,
                image_pull_policy=self.config.image_pull_policy,
                progress_url=self.config.progress_url,
                progress_ca=self.tls.ca if self.tls is not None else None,
            ),
            self.store.lookup,
            ask_stop=self.store.ask_stop,
        )
        self.api.on_error = lambda verb: self.metrics.api_errors.labels(verb).inc()
        self.store.notify = self.enqueue_threadsafe
        self.in_flight = 0
        self.quiet = threading.Condition()
        self.store.measure = self.metrics.epoch

    # --- queue ------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        # One thread per queue worker: a reconcile is mostly waiting on the API server, so
        # concurrency, not CPU, bounds how fast a burst of pipelines gets its Jobs.
        self.loop.set_default_executor(ThreadPoolExecutor(self.config.workers + 2, "reconcile"))

    @property
    def leading(self) -> bool:
        return self.queue is not None

    def lead(self, everything: bool = False) -> None:
        """Start reconciling: a queue and its workers. With `everything`, every pipeline is queued
        once (a new leader: what happened while another replica led is in status and the cluster)."""
        if self.leading:
            return
        self.queue = asyncio.PriorityQueue()
        self.tasks = [asyncio.create_task(self._work(self.queue)) for _ in range(self.config.workers)]
        if everything:
            self.tasks.append(asyncio.create_task(self._enqueue_all()))
        self.metrics.leader.set(1)
        log.info("reconciling (leading)")

    def abdicate(self) -> None:
        """Stop reconciling at once: workers cancelled, the queue and what was learnt meanwhile dropped."""
        for task in self.tasks:
            task.cancel()
        self.tasks = []
        for timer in self.timers.values():
            timer.cancel()
        for key in self.statuses:
            self.metrics.record(key, None, None)
        self.queue = None
        for learnt in (self.queued, self.running, self.dirty, self.timers):
            learnt.clear()
        for kept in (self.statuses, self.unseen, self.held):
            kept.clear()
        self.metrics.leader.set(0)

    async def stop(self) -> None:
        tasks = list(self.tasks)
        self.abdicate()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wait_quiet(self, timeout: float) -> bool:
        """Wait (blocking) until no reconcile step runs in a thread; whether that happened in time."""
        with self.quiet:
            return self.quiet.wait_for(lambda: self.in_flight == 0, timeout)

    async def _enqueue_all(self) -> None:
        while True:  # cancelled with the workers when this replica stops leading
            try:
                bodies = await asyncio.to_thread(self.list_pipelines)
                break
            except Exception:
                log.exception("listing pipelines failed; retrying")
                await asyncio.sleep(2.0)
        for body in bodies:
            meta = body["metadata"]
            key = (meta["namespace"], meta["name"])
            if not body.get("status"):
                self.unseen[key] = body
            self.enqueue(key, urgent=not body.get("status"))

    def list_pipelines(self) -> list[dict[str, Any]]:
        paths = [PATHS["TrainingPipeline"].format(ns=ns) for ns in self.config.namespaces]
        bodies: list[dict[str, Any]] = []
        for path in paths or [f"/apis/{GROUP}/{VERSION}/{PLURAL}"]:
            bodies += self.api.get(path).get("items", [])
        return bodies

    def enqueue(self, key: Key, delay: float = 0.0, urgent: bool = False) -> None:
        """Queue `key` once; `urgent` keys (pipelines never reconciled) go before resyncs and child
        events, so a burst of new pipelines gets its first Jobs quickly."""
        if self.loop is None or self.queue is None:
            return
        if delay > 0:
            timer = self.timers.pop(key, None)
            if timer is not None:
                timer.cancel()
            self.timers[key] = self.loop.call_later(delay, self.enqueue, key)
            return
        if key in self.running:
            self.dirty.add(key)
        elif key not in self.queued:
            self.queued.add(key)
            self.sequence += 1
            self.queue.put_nowait((0 if urgent else 1, self.sequence, key))

    def enqueue_threadsafe(self, namespace: str, pipeline_label: str) -> None:
        name = self.names.get((namespace, pipeline_label), pipeline_label)
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.enqueue, (namespace, name))

    def forget(self, key: Key) -> None:
        timer = self.timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self.store.forget(*key)
        self.statuses.pop(key, None)
        self.unseen.pop(key, None)
        self.held.pop(key, None)
        self.metrics.record(key, None, None)

    async def _work(self, queue: asyncio.PriorityQueue[tuple[int, int, Key]]) -> None:
        while True:
            _, _, key = await queue.get()
            self.queued.discard(key)
            self.running.add(key)
            delay: float | None = None
            started = time.monotonic()
            try:
                delay = await asyncio.to_thread(self.counted_step, key)
                self.metrics.reconciles.labels("ok").inc()
            except Fenced:
                delay = None
            except Exception:
                log.exception("reconcile of %s/%s failed; retrying", *key)
                self.metrics.reconciles.labels("error").inc()
                delay = 5.0
            finally:
                self.metrics.latency.observe(time.monotonic() - started)
                self.running.discard(key)
            if key in self.dirty:
                self.dirty.discard(key)
                self.enqueue(key)
            elif delay is not None:
                self.enqueue(key, max(0.05, delay))

    # --- one reconcile ----------------------------------------------------------------------------

    def counted_step(self, key: Key) -> float | None:
        with self.quiet:
            self.in_flight += 1
        try:
            return self.step(key)
        finally:
            with self.quiet:
                self.in_flight -= 1
                self.quiet.notify_all()

    def check_fence(self) -> None:
        if not self.fence():
            raise Fenced

    def step(self, key: Key) -> float | None:
        """Observe, decide, write status, act. Returns when to look again (None: only on changes)."""
        namespace, name = key
        path = PATHS["TrainingPipeline"].format(ns=namespace) + f"/{name}"
        body = self.unseen.pop(key, None)
        if body is None or key in self.statuses:  # once stepped here, an event's body may be stale
            try:
                body = self.api.get(path)
            except ApiError as error:
                if error.status == 404:
                    return None
                raise
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return None
        self.check_fence()
        self.names[(namespace, builders.label_value(name))] = name
        old_wire = body.get("status") or None
        try:
            pipeline = parse(body)
            if rules.cluster_problems(pipeline.spec):
                raise ManifestError(rules.cluster_problems(pipeline.spec))
        except ManifestError as error:
            invalid = {"phase": "Failed", "reason": "InvalidSpec", "message": str(error)[:4096]}
            if {k: (old_wire or {}).get(k) for k in invalid} != invalid:
                self.check_fence()
                self.executor.patch_status(namespace, name, {**(old_wire or {}), **invalid})
            return None
        held = self.held.pop(key, None)
        status = pipeline.status or held
        executor = self.executor.for_pipeline(owner_of(body, pipeline.spec), body)
        serving = status is not None and status.serving is not None
        observations = executor.observe(active_workloads(status), serving)
        decision = reconcile(
            pipeline.spec, status, observations, datetime.now(UTC), generation=meta.get("generation")
        )
        builders.note_provisioned_storage(decision.status, pipeline.spec, name)
        self.check_fence()  # observing took time: is this replica still the one that may act?
        self.metrics.record(key, status, decision.status)
        self.statuses[key] = decision.status
        if status is None:  # a first step: work first, status on the next step
            carry_out(executor, decision.actions)
            self.held[key] = decision.status
            return FIRST_STATUS_DELAY
        new_wire = decision.status.model_dump(mode="json", by_alias=True, exclude_none=True)
        if new_wire != old_wire:
            try:
                self.executor.patch_status(namespace, name, new_wire)
            except ApiError as error:
                if error.status == 404:  # deleted while this step ran: its children go with it
                    return None
                raise
            self.check_fence()
        carry_out(executor, decision.actions)
        delays = [d for d in (decision.requeue_after,) if d is not None]
        if decision.status.phase not in FINISHED:
            delays.append(self.config.resync_seconds)
        return min(delays) if delays else None


def reflects_spec(body: Mapping[str, Any]) -> bool:
    """Whether the pipeline's status was written for its current spec: then a MODIFIED event is this
    operator's own status write (or a metadata edit) and needs no reconcile."""
    generation = (body.get("metadata") or {}).get("generation")
    return generation is not None and (body.get("status") or {}).get("observedGeneration") == generation


def pipeline_key_of(body: Mapping[str, Any]) -> Key | None:
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "TrainingPipeline" and ref.get("apiVersion", "").startswith(GROUP + "/"):
            return body["metadata"]["namespace"], ref["name"]
    return None


def registry_for(controller: Controller) -> kopf.OperatorRegistry:
    """kopf handlers bound to `controller` (an explicit registry: no module-level globals)."""
    registry = kopf.OperatorRegistry()
    config = controller.config
    runners: list[Any] = []
    candidacies: list[asyncio.Task[None]] = []
    elector = elector_for(controller)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if config.kubeconfig:
            os.environ["KUBECONFIG"] = config.kubeconfig
            return kopf.login_with_kubeconfig(**kwargs)
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.peering.standalone = True
        settings.posting.enabled = False  # Events come from the engine's Emit actions
        settings.scanning.disabled = True  # no CRD/namespace watching: least-privilege RBAC
        settings.persistence.diffbase_storage = NoDiffBase()
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        await controller.start()
        if config.metrics_port:
            controller.metrics.serve(config.metrics_port)
        if config.progress_url:
            server = ProgressServer(
                controller.store, review_token(controller.api), read_pod(controller.api),
                accepting=lambda: controller.leading,
                leader_endpoint=lambda: elector.peer if elector is not None else None,
                trust=controller.tls.client if controller.tls is not None else None,
            )
            tls = controller.tls.server if controller.tls is not None else None
            runners.append(await serve(server, "0.0.0.0", config.progress_port, tls))
        if elector is None:
            controller.lead()
        else:
            candidacies.append(asyncio.create_task(elector.run()))

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        for task in candidacies:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await controller.stop()
        if elector is not None:
            elector.step_down()
            # The standby may start once the Lease is released: let the steps in flight end first.
            await asyncio.to_thread(controller.wait_quiet, elector.timings.renew_deadline)
            await asyncio.to_thread(elector.release)
        for runner in runners:
            await runner.cleanup()

    # Async handlers run on the event loop (kopf runs sync ones in threads): the queue is loop-only.
    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def pipeline_event(
        type: str, event: Mapping[str, Any], namespace: str | None, name: str, **_: Any
    ) -> None:
        if not controller.leading:  # a standby: the leader it may become lists every pipeline
            return
        key = (namespace or "", name)
        body = event["object"]
        if type == "DELETED":
            controller.forget(key)
        elif not body.get("status"):
            controller.unseen[key] = body
            controller.enqueue(key, urgent=True)
        elif type != "MODIFIED" or not reflects_spec(body):
            controller.unseen.pop(key, None)
            controller.enqueue(key)

    managed = {"app.kubernetes.io/managed-by": builders.FIELD_MANAGER}

    @kopf.on.event("batch", "v1", "jobs", labels=managed, registry=registry)
    async def job_event(type: str, body: Mapping[str, Any], **_: Any) -> None:
        key = pipeline_key_of(body)
        if key is not None and type != "ADDED":
            controller.enqueue(key)

    @kopf.on.event("apps", "v1", "deployments", labels=managed, registry=registry)
    async def deployment_event(body: Mapping[str, Any], **_: Any) -> None:
        key = pipeline_key_of(body)
        if key is not None:
            controller.enqueue(key)

    @kopf.on.event("v1", "pods", labels=managed, registry=registry)
    async def pod_event(type: str, namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
        value = labels.get(builders.LABEL_PIPELINE)
        if value and namespace and type != "ADDED":
            controller.enqueue((namespace, controller.names.get((namespace, value), value)))

    return registry


def elector_for(controller: Controller) -> leader.Elector | None:
    """The candidacy of this replica, if leader election is on: it starts and stops `controller`."""
    candidacy = controller.config.leader_election
    if candidacy is None:
        return None
    # Its own short request timeout: a hung renewal must not outlast the renew deadline.
    api = Api(controller.api.client, timeout=candidacy.timings.renew_deadline / 2)
    elector = leader.Elector(api, candidacy, lambda: controller.lead(everything=True), controller.abdicate)
    controller.fence = elector.leading
    return elector


def review_token(api: Api) -> Any:
    def review(token: str) -> Mapping[str, Any] | None:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [builders.TOKEN_AUDIENCE]},
        }
        reply = api.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body)
        status: Mapping[str, Any] | None = (reply or {}).get("status")
        if status and builders.TOKEN_AUDIENCE not in (status.get("audiences") or []):
            return None
        return status

    return review


def read_pod(api: Api) -> Any:
    def read(namespace: str, name: str) -> Mapping[str, Any] | None:
        try:
            pod: Mapping[str, Any] = api.get(PATHS["Pod"].format(ns=namespace) + f"/{name}")
        except ApiError:
            return None
        return pod

    return read


def run(config: OperatorConfig) -> None:
    """Run the operator until interrupted (what `conveyor operator` and the chart's Deployment do)."""
    api = Api(api_client(config.kubeconfig, config.workers + 8))
    tls = None
    if config.progress_url and config.progress_tls_secret:
        advertised = config.leader_election.endpoint if config.leader_election else None
        tls = progress_tls(api, config.progress_tls_secret, (config.progress_url, advertised))
    controller = Controller(api, config, tls=tls)
    registry = registry_for(controller)
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None,
    )
