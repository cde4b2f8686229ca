"""The progress endpoint over TLS (statusserver): certificates issued from the operator's CA for the
names clients use, the trainer's push verified against the CA it is given (and refused otherwise),
over real sockets; the token review is a stand-in function (the e2e tests use the real TokenReview)."""

from __future__ import annotations

import asyncio
import ipaddress
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from conveyor.operator.kubernetes import statusserver as ss
from conveyor.trainer import progress
from tests.helpers.operator_bed import free_port
from tests.unit.test_kubernetes_observe import LABELS, review_for

NOW = datetime.now(UTC)
KEY = ("ml", "digits", "trial-0001", 1)
EVENT = '{"event":"epoch","epoch":1,"epochs":3,"metrics":{"accuracy":0.5}}'


def test_the_serving_certificate_names_every_host_and_chains_to_the_ca() -> None:
    ca_pem, ca_key = ss.new_ca(NOW)
    cert_pem, _ = ss.serving_certificate(
        ca_pem, ca_key, ["conveyor-progress.conveyor-system.svc", "10.0.0.7", "fd00::1", "10.0.0.7"], NOW
    )
    ca, cert = (
        x509.load_pem_x509_certificate(ca_pem.encode()),
        x509.load_pem_x509_certificate(cert_pem.encode()),
    )
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["conveyor-progress.conveyor-system.svc"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("fd00::1"),
    ]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    with pytest.raises(ValueError, match="at least one host"):
        ss.serving_certificate(ca_pem, ca_key, [], NOW)


def test_push_verifies_the_endpoint_against_the_ca_it_is_given(
    loop: asyncio.AbstractEventLoop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right CA: the epoch arrives. A CA that did not sign the endpoint's certificate, or a plain http
    URL while a CA is configured: push() returns False and the endpoint receives nothing."""
    ca_pem, ca_key = ss.new_ca(NOW)
    tls = ss.tls_contexts(ca_pem, ca_key, ["127.0.0.1"], NOW)
    assert tls.ca == ca_pem
    store = ss.ProgressStore()
    server = ss.ProgressServer(
        store,
        lambda token: review_for("p-0") if token == "good" else {"authenticated": False},
        lambda ns, name: {"metadata": {"labels": LABELS}},
    )
    port = free_port()
    runner = asyncio.run_coroutine_threadsafe(ss.serve(server, "127.0.0.1", port, tls.server), loop).result(
        10
    )
    try:
        token, right, wrong = tmp_path / "token", tmp_path / "ca.crt", tmp_path / "other-ca.crt"
        token.write_text("good")
        right.write_text(ca_pem)
        wrong.write_text(ss.new_ca(NOW)[0])
        monkeypatch.setenv(progress.PROGRESS_URL_ENV, f"https://127.0.0.1:{port}")
        monkeypatch.setenv(progress.PROGRESS_TOKEN_FILE_ENV, str(token))
        monkeypatch.delenv("RANK", raising=False)

        monkeypatch.setenv(progress.PROGRESS_CA_FILE_ENV, str(right))
        assert progress.push(EVENT, timeout=10) is True
        assert [e.epoch for e in store.lookup(*KEY)] == [1]

        monkeypatch.setenv(progress.PROGRESS_CA_FILE_ENV, str(wrong))
        assert progress.push(EVENT.replace('"epoch":1', '"epoch":2'), timeout=10) is False
        monkeypatch.delenv(progress.PROGRESS_CA_FILE_ENV)  # the system's CAs know nothing of this one
        assert progress.push(EVENT.replace('"epoch":1', '"epoch":2'), timeout=10) is False
        # a CA configured with an http URL: nothing is sent in the clear (a plain listener would see it)
        monkeypatch.setenv(progress.PROGRESS_CA_FILE_ENV, str(right))
        monkeypatch.setenv(progress.PROGRESS_URL_ENV, f"http://127.0.0.1:{port}")
        assert progress.push(EVENT.replace('"epoch":1', '"epoch":3'), timeout=10) is False
        assert [e.epoch for e in store.lookup(*KEY)] == [1]
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)


def test_a_certificate_for_other_names_is_refused(
    loop: asyncio.AbstractEventLoop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The right CA but a certificate issued for the Service's name only: connecting by IP fails."""
    ca_pem, ca_key = ss.new_ca(NOW)
    tls = ss.tls_contexts(ca_pem, ca_key, ["conveyor-progress.conveyor-system.svc"], NOW)
    store = ss.ProgressStore()
    server = ss.ProgressServer(
        store, lambda _: review_for("p-0"), lambda ns, n: {"metadata": {"labels": LABELS}}
    )
    port = free_port()
    runner = asyncio.run_coroutine_threadsafe(ss.serve(server, "127.0.0.1", port, tls.server), loop).result(
        10
    )
    try:
        (tmp_path / "token").write_text("good")
        (tmp_path / "ca.crt").write_text(ca_pem)
        monkeypatch.setenv(progress.PROGRESS_URL_ENV, f"https://127.0.0.1:{port}")
        monkeypatch.setenv(progress.PROGRESS_TOKEN_FILE_ENV, str(tmp_path / "token"))
        monkeypatch.setenv(progress.PROGRESS_CA_FILE_ENV, str(tmp_path / "ca.crt"))
        monkeypatch.delenv("RANK", raising=False)
        assert progress.push(EVENT, timeout=10) is False
        assert store.lookup(*KEY) == ()
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)


def test_the_tls_secret_must_name_a_namespace_and_a_name() -> None:
    with pytest.raises(ValueError, match="NAMESPACE/NAME"):
        ss.progress_tls(None, "just-a-name", ["https://x.svc:8081"])  # type: ignore[arg-type]
