from __future__ import annotations

import email
import email.policy
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import numpy as np
import pytest
from aiosmtpd.controller import Controller

from driftloop.config import NotifyConfig
from driftloop.errors import ConfigError, DriftloopError
from driftloop.notify import (
    Delivery,
    Event,
    LogNotifier,
    NotificationError,
    Notifier,
    NullNotifier,
    SmtpNotifier,
    WebhookNotifier,
    make_notifier,
    notify_or_raise,
)

DETAILS = {"from_version": "v1", "to_version": "v2", "f1_macro": 0.91}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def event(**overrides: Any) -> Event:
    fields: dict[str, Any] = {
        "kind": "model_update", "title": "Promote v2", "model_name": "churn",
        "details": dict(DETAILS), "run_id": "run-7", "time": "2024-05-01T12:00:00+00:00",
    }
    fields.update(overrides)
    return Event(**fields)


# -- webhook -----------------------------------------------------------------------


@dataclass
class Receiver:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], Receiver]]:
    """Start HTTP receivers on 127.0.0.1 answering a fixed status; stop them afterwards."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    servers: list[tuple[HTTPServer, threading.Thread]] = []

    def start(status: int) -> Receiver:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                rec.requests.append({
                    "path": self.path,
                    "content_type": self.headers["Content-Type"],
                    "body": body,
                })
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", self.path)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        server = HTTPServer(("127.0.0.1", 0), Handler)
        rec = Receiver(f"http://127.0.0.1:{server.server_address[1]}/hook")
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        servers.append((server, thread))
        return rec

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_webhook_posts_the_event_as_json(receiver: Callable[[int], Receiver]) -> None:
    rec = receiver(200)
    delivery = WebhookNotifier(rec.url, timeout_s=5).send(
        event(details={**DETAILS, "count": np.int64(3)})
    )
    assert delivery == Delivery("webhook", True, None)
    assert len(rec.requests) == 1
    got = rec.requests[0]
    assert got["path"] == "/hook"
    assert got["content_type"] == "application/json"
    assert json.loads(got["body"]) == {
        "kind": "model_update", "title": "Promote v2", "model_name": "churn",
        "details": {**DETAILS, "count": 3}, "run_id": "run-7",
        "time": "2024-05-01T12:00:00+00:00",
    }


@pytest.mark.parametrize("status", [500, 404, 302])
def test_webhook_non_2xx_is_a_failed_delivery(
    receiver: Callable[[int], Receiver], status: int, caplog: pytest.LogCaptureFixture
) -> None:
    rec = receiver(status)
    with caplog.at_level(logging.WARNING, logger="driftloop.notify"):
        delivery = WebhookNotifier(rec.url, timeout_s=5).send(event())
    assert not delivery.ok
    assert f"HTTP {status}" in str(delivery.error)
    assert len(rec.requests) == 1  # a redirect is reported, not followed
    assert any(f"HTTP {status}" in r.getMessage() for r in caplog.records)


def test_webhook_unreachable_port_is_a_failed_delivery() -> None:
    delivery = WebhookNotifier(f"http://127.0.0.1:{free_port()}/x", timeout_s=2).send(event())
    assert delivery.backend == "webhook"
    assert not delivery.ok
    assert delivery.error


def test_webhook_refuses_non_http_urls() -> None:
    with pytest.raises(ConfigError, match="http"):
        WebhookNotifier("file:///etc/passwd")


# -- smtp --------------------------------------------------------------------------


class _Inbox:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, _Inbox]]:
    inbox = _Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, ready_timeout=5)
    controller.start()
    try:
        yield port, inbox
    finally:
        controller.stop()


def test_smtp_sends_subject_recipients_and_details(smtp_server: tuple[int, _Inbox]) -> None:
    port, inbox = smtp_server
    recipients = ["ops@example.com", "ml@example.com"]
    notifier = SmtpNotifier("127.0.0.1", port, "driftloop@example.com", recipients, 5)
    delivery = notifier.send(event())
    assert delivery == Delivery("smtp", True, None)
    assert len(inbox.envelopes) == 1
    envelope = inbox.envelopes[0]
    assert envelope.mail_from == "driftloop@example.com"
    assert envelope.rcpt_tos == recipients
    msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert msg["Subject"] == "[driftloop] model_update: Promote v2"
    body = msg.get_body(preferencelist=("plain",)).get_content()
    assert "model: churn" in body
    assert "run-7" in body
    assert '"f1_macro": 0.91' in body
    assert '"to_version": "v2"' in body


def test_smtp_unreachable_is_a_failed_delivery() -> None:
    notifier = SmtpNotifier("127.0.0.1", free_port(), "a@example.com", ["b@example.com"], 2)
    delivery = notifier.send(event(kind="failure", title="ingest failed"))
    assert delivery.backend == "smtp"
    assert not delivery.ok


def test_smtp_subject_stays_one_line() -> None:
    msg = SmtpNotifier("h", 25, "a@x", ["b@x"]).message(event(title="bad\r\nBcc: evil@x"))
    assert msg["Subject"] == "[driftloop] model_update: bad Bcc: evil@x"
    assert msg["Bcc"] is None


# -- log, null, factory, notify_or_raise -------------------------------------------


def test_log_notifier_logs_event(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="driftloop.notify"):
        assert LogNotifier().send(event(kind="rollback", title="back to v1")).ok
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "rollback: back to v1" in record.getMessage()
    assert '"from_version": "v1"' in record.getMessage()


def test_event_rejects_unknown_kind_and_stamps_time() -> None:
    with pytest.raises(ValueError, match="event kind 'oops'"):
        Event("oops", "t", "m", {})
    assert Event("info", "t", "m", {}).time.endswith("+00:00")


def test_make_notifier_picks_backend() -> None:
    assert isinstance(make_notifier(NotifyConfig(backend="none")), NullNotifier)
    assert isinstance(make_notifier(NotifyConfig()), LogNotifier)
    web = make_notifier(NotifyConfig(backend="webhook", webhook_url="http://h/x", timeout_s=3))
    assert isinstance(web, WebhookNotifier)
    assert (web.url, web.timeout_s) == ("http://h/x", 3)
    smtp = make_notifier(NotifyConfig(
        backend="smtp", smtp_host="mail", smtp_port=2525, sender="s@x", recipients=("r@x",),
    ))
    assert isinstance(smtp, SmtpNotifier)
    assert (smtp.host, smtp.port, smtp.sender, smtp.recipients) == ("mail", 2525, "s@x", ["r@x"])


class _Failing(Notifier):
    backend = "fake"

    def send(self, event: Event) -> Delivery:
        return Delivery(self.backend, False, "mailbox full")


class _Raising(Notifier):
    backend = "broken"

    def send(self, event: Event) -> Delivery:
        raise OSError("boom")


def test_notify_or_raise_only_when_required() -> None:
    assert notify_or_raise(_Failing(), event(), required=False).ok is False
    with pytest.raises(NotificationError, match=r"via fake failed \(mailbox full\)") as info:
        notify_or_raise(_Failing(), event(), required=True)
    assert isinstance(info.value, DriftloopError)
    with pytest.raises(NotificationError, match="boom"):
        notify_or_raise(_Raising(), event(), required=True)
    assert notify_or_raise(_Raising(), event(), required=False) == Delivery(
        "broken", False, "boom"
    )
    assert notify_or_raise(NullNotifier(), event(), required=True).ok
