"""The progress endpoint: live per-epoch events pushed by training pods to the operator.

Why a push endpoint: pruning and live status need every epoch within seconds, and the design rules out
sidecars, log scraping and any write access to the Kubernetes API from workload pods (Katib's metrics
collector pains, anchors §6 #8). Kubeflow Trainer's status server is the model:

- A pod POSTs one epoch event (the trainer's `progress.emit` JSON) to `POST /v1/progress` with
  `Authorization: Bearer <token>`, where the token is a projected service-account token for the
  audience `conveyor.dev` (mounted by `builders.progress_pieces`). The API server does not accept that
  audience, so the token is useless for anything but this endpoint.
- The operator verifies it with a TokenReview (audience `conveyor.dev`) and reads the pod's name from
  the review (`authentication.kubernetes.io/pod-name`); the pipeline, workload and attempt come from
  that pod's labels, never from the request, so a pod can only report for itself. Reviews are cached
  per token for a minute.
- Each pod is rate-limited (token bucket: 5 events/s, burst 20; 429 beyond) and bodies are capped
  at 16 KiB.
- The reply is how a pruned user loop learns to stop: once the engine asked to stop that workload
  attempt (`ProgressStore.ask_stop`, from the executor's `request_stop`), its POSTs are answered
  `{"stop": true}` (200) instead of `{"accepted": true}` (202), and `conveyor.sdk.report` returns False.
- Only the leader (leader election) keeps events; the progress Service spreads pods over every
  replica, so a standby forwards each POST (same body and Authorization header, a short timeout) to
  the endpoint the leader advertises on its Lease (`leader.advertised`, never an address from the
  request) and answers with the leader's status and body (a stop included); the leader
  authenticates it as usual. No leader known, or the leader unreachable: 503, as is a forwarded
  request reaching a non-leader (no loops).

TLS (`progress_tls`; the chart's default, `progress.tls.enabled`): the endpoint serves HTTPS and pods
verify it, so a token and an epoch never cross the network in the clear nor reach an impostor. The
operator is its own CA, the simplest set-up that needs nothing installed besides the chart:
- The CA (an EC P-256 key and a self-signed certificate) lives in one Secret in the operator's
  namespace (`--progress-tls-secret NAMESPACE/NAME`; the chart's Role grants `get` on that name
  only, and `create`, which RBAC cannot limit to a name). The first replica to start creates it; a
  replica that finds it, or loses the create race (409), reads it, so every replica serves
  certificates of the same CA. It is never rotated by itself: delete the Secret and restart every
  replica to rotate (Jobs made before keep the old CA: their pushes fail, best effort, while results
  still arrive through termination messages).
- Each replica issues its own serving certificate from that CA at start, for the host names clients
  use: the progress URL's (the Service's DNS name) and its advertised URL's (its pod IP, for a
  standby's forward). Its key stays in the process (a 0600 file in a private temporary directory,
  deleted once loaded).
- Workload pods run in any namespace, where a ConfigMap of the operator's namespace cannot be
  mounted, and copying one into every namespace would need write access to ConfigMaps everywhere.
  The CA certificate is public, so the operator writes it into each pod template's annotation
  `builders.PROGRESS_CA_ANNOTATION` and the kubelet projects that into a file next to the token
  (downward API); the trainer verifies against that file alone (`CONVEYOR_PROGRESS_CA_FILE`).
- A standby forwards to the leader's advertised https URL verifying it against the same CA.
- Plain http only when the progress URL says http:// (tests and `conveyor operator` outside the
  chart); a trainer given a CA never sends over http.

Events are kept in memory (`ProgressStore`) per (namespace, pipeline, workload, attempt); the engine
copies every epoch's objective into status on the next reconcile, so an operator restart loses at most
the epochs not yet absorbed, never a result: final results travel through the termination message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conveyor.operator.engine.observations import EpochReport
from conveyor.operator.kubernetes import builders
from conveyor.operator.kubernetes.executor import Api, ApiError

log = logging.getLogger("conveyor.operator.progress")

MAX_BODY = 16 * 1024
RATE_PER_SECOND = 5.0
BURST = 20.0
REVIEW_TTL_SECONDS = 60.0
MAX_EPOCHS = 10_000
FORWARD_TIMEOUT_SECONDS = 3.0
FORWARDED = "X-Conveyor-Forwarded"  # set on a standby's forward: the receiver never forwards again
PATH = "/v1/progress"
SECRETS = "/api/v1/namespaces/{ns}/secrets"
CA_CERT, CA_KEY = "ca.crt", "ca.key"  # the Secret's keys
CERT_DAYS = 3650  # the CA's and each serving certificate's validity

Key = tuple[str, str, str, int]  # namespace, pipeline, workload, attempt


@dataclass
class ProgressStore:
    """Epoch reports by workload attempt; `notify` wakes the pipeline's reconcile; `measure` gets each
    epoch's throughput (namespace, pipeline, workload, samples/s or None), for the metrics; `stops`:
    the attempts the engine asked to stop (`ask_stop`), whose POSTs are answered `{"stop": true}`."""

    events: dict[Key, dict[int, EpochReport]] = field(default_factory=dict)
    stops: set[Key] = field(default_factory=set)
    notify: Callable[[str, str], None] | None = None
    measure: Callable[[str, str, str, float | None], None] | None = None

    def add(self, key: Key, event: Mapping[str, Any]) -> None:
        if event.get("event") != "epoch" or not isinstance(event.get("epoch"), int):
            return
        reports = self.events.setdefault(key, {})
        if len(reports) < MAX_EPOCHS:
            reports[int(event["epoch"])] = EpochReport.from_event(event)
        if self.measure is not None:
            rate = event.get("samplesPerSecond")
            self.measure(key[0], key[1], key[2], float(rate) if isinstance(rate, int | float) else None)
        if self.notify is not None:
            self.notify(key[0], key[1])

    def lookup(self, namespace: str, pipeline: str, workload: str, attempt: int) -> tuple[EpochReport, ...]:
        reports = self.events.get((namespace, pipeline, workload, attempt), {})
        return tuple(reports[e] for e in sorted(reports))

    def ask_stop(self, namespace: str, pipeline: str, workload: str, attempt: int) -> None:
        """From now on answer that attempt's POSTs with `{"stop": true}` (the engine repeats the ask on
        every reconcile until the attempt is gone, so a new leader learns it on its first)."""
        self.stops.add((namespace, pipeline, workload, attempt))

    def forget(self, namespace: str, pipeline: str) -> None:
        for key in [k for k in self.events if k[:2] == (namespace, pipeline)]:
            del self.events[key]
        self.stops -= {k for k in self.stops if k[:2] == (namespace, pipeline)}


@dataclass
class Bucket:
    tokens: float = BURST
    stamp: float = field(default_factory=time.monotonic)

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(BURST, self.tokens + (now - self.stamp) * RATE_PER_SECOND)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


Reviewer = Callable[[str], Mapping[str, Any] | None]  # token -> TokenReview status, or None
PodReader = Callable[[str, str], Mapping[str, Any] | None]  # (namespace, name) -> pod


def forward_target(leader_endpoint: str | None, headers: Mapping[str, str]) -> str | None:
    """Where a standby sends a POST it received: the leader's advertised endpoint, unless there is
    none or the request was itself forwarded (then 503)."""
    if not leader_endpoint or FORWARDED in headers:
        return None
    return leader_endpoint.rstrip("/") + PATH


@dataclass
class ProgressServer:
    store: ProgressStore
    review: Reviewer
    read_pod: PodReader
    reviews: dict[str, tuple[float, Key | None]] = field(default_factory=dict)
    buckets: dict[Key, Bucket] = field(default_factory=dict)
    accepting: Callable[[], bool] = lambda: True  # False on a standby replica (leader election)
    leader_endpoint: Callable[[], str | None] = lambda: None  # the leader's, from its Lease (standby)
    trust: ssl.SSLContext | None = None  # verifies the leader's certificate (TLS); None: system CAs
    session: aiohttp.ClientSession | None = None

    def identify(self, token: str) -> Key | None:
        """The workload attempt a token belongs to (its pod's labels), or None if not authentic."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        cached = self.reviews.get(digest)
        if cached is not None and time.monotonic() - cached[0] < REVIEW_TTL_SECONDS:
            return cached[1]
        key = None
        status = self.review(token)
        if status and status.get("authenticated"):
            extra = (status.get("user") or {}).get("extra") or {}
            pods = extra.get("authentication.kubernetes.io/pod-name") or []
            username = (status.get("user") or {}).get("username", "")
            parts = username.split(":")  # system:serviceaccount:<namespace>:<name>
            if pods and len(parts) == 4:
                pod = self.read_pod(parts[2], pods[0])
                labels = ((pod or {}).get("metadata") or {}).get("labels") or {}
                pipeline = labels.get(builders.LABEL_PIPELINE)
                workload = labels.get(builders.LABEL_WORKLOAD)
                attempt = labels.get(builders.LABEL_ATTEMPT)
                if pipeline and workload and attempt and attempt.isdigit():
                    key = (parts[2], pipeline, workload, int(attempt))
        if len(self.reviews) > 10_000:
            self.reviews.clear()
        self.reviews[digest] = (time.monotonic(), key)
        return key

    async def forward(self, request: web.Request) -> web.Response:
        """A standby's answer: the leader's, to the same request sent on to it (503 if it cannot be)."""
        target = forward_target(self.leader_endpoint(), request.headers)
        if target is None:
            return web.json_response({"error": "not the leader"}, status=503)
        if (request.content_length or 0) > MAX_BODY:
            return web.json_response({"error": "body too large"}, status=413)
        body = await request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return web.json_response({"error": "body too large"}, status=413)
        headers = {"Content-Type": "application/json", FORWARDED: "1"}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        if self.session is None:
            self.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_SECONDS),
                connector=aiohttp.TCPConnector(ssl=self.trust if self.trust is not None else True),
            )
        try:
            async with self.session.post(target, data=body, headers=headers, allow_redirects=False) as reply:
                answer = await reply.read()
                return web.Response(body=answer, status=reply.status, content_type="application/json")
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("progress event not forwarded to the leader at %s: %s", target, error)
            return web.json_response({"error": "not the leader, and the leader is unreachable"}, status=503)

    async def close(self, _: web.Application | None = None) -> None:
        if self.session is not None:
            with contextlib.suppress(Exception):
                await self.session.close()
            self.session = None

    async def handle(self, request: web.Request) -> web.Response:
        if not self.accepting():
            return await self.forward(request)
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return web.json_response({"error": "a bearer token is required"}, status=401)
        if (request.content_length or 0) > MAX_BODY:
            return web.json_response({"error": "body too large"}, status=413)
        key = await asyncio.to_thread(self.identify, header.removeprefix("Bearer ").strip())
        if key is None:
            return web.json_response({"error": "token not accepted"}, status=403)
        if not self.buckets.setdefault(key, Bucket()).take():
            return web.json_response({"error": "rate limited"}, status=429)
        try:
            body = json.loads((await request.content.read(MAX_BODY + 1))[:MAX_BODY])
        except ValueError:
            return web.json_response({"error": "body must be a JSON epoch event"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        self.store.add(key, body)
        if key in self.store.stops:
            return web.json_response({"stop": True}, status=200)
        return web.json_response({"accepted": True}, status=202)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post(PATH, self.handle)
        app.router.add_get("/healthz", healthz)
        app.on_cleanup.append(self.close)
        return app


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def serve(
    server: ProgressServer, host: str, port: int, tls: ssl.SSLContext | None = None
) -> web.AppRunner:
    """Serve `server` on host:port, over HTTPS with `tls` (`ProgressTLS.server`), else plain HTTP."""
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=tls).start()
    log.info("progress endpoint on %s:%d (%s)", host, port, "https" if tls else "http")
    return runner


# --- TLS ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgressTLS:
    """The CA's certificate (PEM, what pods and standbys trust) and this replica's contexts: `server`
    presents its serving certificate, `client` trusts the CA alone."""

    ca: str
    server: ssl.SSLContext
    client: ssl.SSLContext


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def new_ca(now: datetime) -> tuple[str, str]:
    """A self-signed CA that may sign only leaf certificates: (certificate PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("conveyor progress CA"))
        .issuer_name(_name("conveyor progress CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key)


def serving_certificate(ca_pem: str, ca_key_pem: str, hosts: Iterable[str], now: datetime) -> tuple[str, str]:
    """A serving certificate signed by the CA for `hosts` (DNS names or IP addresses): (cert, key)."""
    ca = x509.load_pem_x509_certificate(ca_pem.encode())
    ca_key = serialization.load_pem_private_key(ca_key_pem.encode(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the progress CA's key is not an EC key")
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    if not names:
        raise ValueError("a serving certificate needs at least one host name")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("conveyor progress endpoint"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(min(now + timedelta(days=CERT_DAYS), ca.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key)


def tls_contexts(ca_pem: str, ca_key_pem: str, hosts: Iterable[str], now: datetime) -> ProgressTLS:
    """This replica's TLS: a fresh serving certificate for `hosts` from the CA, and the CA to trust."""
    cert, key = serving_certificate(ca_pem, ca_key_pem, hosts, now)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="conveyor-tls-") as private:  # 0700; ssl reads only files
        path = os.path.join(private, "serving.pem")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.write(cert + key)
        server.load_cert_chain(path)
    client = ssl.create_default_context(cadata=ca_pem)
    return ProgressTLS(ca_pem, server, client)


def progress_ca(api: Api, namespace: str, name: str, now: datetime) -> tuple[str, str]:
    """The CA in Secret namespace/name, created by the first replica to get here: (cert, key)."""
    path = SECRETS.format(ns=namespace) + f"/{name}"
    for _ in range(3):
        try:
            data = api.get(path).get("data") or {}
        except ApiError as error:
            if error.status != 404:
                raise
        else:
            if CA_CERT not in data or CA_KEY not in data:
                raise ValueError(f"Secret {namespace}/{name} holds no {CA_CERT} and {CA_KEY}")
            return base64.b64decode(data[CA_CERT]).decode(), base64.b64decode(data[CA_KEY]).decode()
        cert, key = new_ca(now)
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "type": "Opaque",
            "data": {
                CA_CERT: base64.b64encode(cert.encode()).decode(),
                CA_KEY: base64.b64encode(key.encode()).decode(),
            },
        }
        try:
            api.request("POST", SECRETS.format(ns=namespace), secret)
        except ApiError as error:
            if error.status != 409:  # 409: another replica created it first; read theirs
                raise
            continue
        log.info("created the progress CA in Secret %s/%s", namespace, name)
        return cert, key
    raise RuntimeError(f"Secret {namespace}/{name}: neither readable nor creatable")


def progress_tls(api: Api, secret: str, urls: Iterable[str | None]) -> ProgressTLS:
    """This replica's TLS from the CA in `secret` (NAMESPACE/NAME), for the hosts of `urls`."""
    namespace, _, name = secret.partition("/")
    if not namespace or not name:
        raise ValueError(f"the progress TLS Secret must be NAMESPACE/NAME, got {secret!r}")
    now = datetime.now(UTC)
    ca, key = progress_ca(api, namespace, name, now)
    hosts = [urlsplit(url).hostname or "" for url in urls if url]
    return tls_contexts(ca, key, [h for h in hosts if h], now)
