"""The progress endpoint's CA on the real API server (statusserver.progress_tls): the first replica
creates the Secret, the next reads it, so both serve certificates of one CA; a Secret of that name
without a CA is refused rather than overwritten."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from conveyor.operator.kubernetes import statusserver as ss
from conveyor.operator.kubernetes.executor import Api
from conveyor.operator.kubernetes.operator import api_client
from tests.helpers.operator_bed import free_port

pytestmark = pytest.mark.cluster


def handshake(server: ssl.SSLContext, trust: ssl.SSLContext, host: str) -> None:
    """A TLS handshake over a real socket: `server` presents its certificate, `trust` verifies it."""

    async def run() -> None:
        port = free_port()
        listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port, ssl=server)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trust, server_hostname=host)
            writer.close()
        finally:
            listener.close()
            await listener.wait_closed()

    asyncio.run(run())


def test_replicas_share_the_ca_the_first_one_created(k8s_api: Any, kubeconfig: Path, namespace: str) -> None:
    api = Api(api_client(str(kubeconfig)))
    secret = f"{namespace}/progress-tls"
    first = ss.progress_tls(api, secret, ["https://conveyor-progress.sys.svc:8081", "https://10.0.0.1:8081"])
    second = ss.progress_tls(api, secret, ["https://conveyor-progress.sys.svc:8081", "https://10.0.0.2:8081"])
    assert first.ca == second.ca
    stored = client.CoreV1Api(k8s_api).read_namespaced_secret("progress-tls", namespace)
    assert set(stored.data) == {ss.CA_CERT, ss.CA_KEY}
    # each replica's certificate verifies with the other's trust, for the names it was issued for
    handshake(first.server, second.client, "conveyor-progress.sys.svc")
    handshake(second.server, first.client, "10.0.0.2")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(second.server, first.client, "10.0.0.1")  # the other replica's address


def test_a_secret_without_a_ca_is_refused(k8s_api: Any, kubeconfig: Path, namespace: str) -> None:
    client.CoreV1Api(k8s_api).create_namespaced_secret(
        namespace, {"metadata": {"name": "taken"}, "stringData": {"other": "x"}}
    )
    with pytest.raises(ValueError, match=r"holds no ca\.crt"):
        ss.progress_tls(Api(api_client(str(kubeconfig))), f"{namespace}/taken", ["https://p.svc:8081"])
