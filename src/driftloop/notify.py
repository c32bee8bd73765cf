"""Notifications about model changes and failures: log, webhook (JSON POST) or e-mail.

A notifier never raises: a failed delivery is logged and reported as ``Delivery(ok=False)``,
and the caller decides (see :func:`notify_or_raise`) whether that blocks the change.
"""

from __future__ import annotations

import json
import logging
import smtplib
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from driftloop.clock import utc_now_iso
from driftloop.config import NotifyConfig
from driftloop.errors import ConfigError, DriftloopError
from driftloop.serde import to_jsonable

logger = logging.getLogger(__name__)

EVENT_KINDS: tuple[str, ...] = ("model_update", "failure", "rollback", "info")


class NotificationError(DriftloopError):
    """A required notification could not be delivered."""


@dataclass
class Event:
    """Something a person should hear about.

    Attributes:
        kind: ``model_update`` (sent before any model or traffic change), ``failure``,
            ``rollback`` or ``info``.
        title: One line for the subject.
        model_name: The model concerned.
        details: JSON-ready facts (versions, metrics, reasons).
        run_id: The pipeline run that produced the event.
        time: ISO-8601 UTC time of the event.
    """

    kind: str
    title: str
    model_name: str
    details: dict[str, Any]
    run_id: str = ""
    time: str = field(default_factory=utc_now_iso)

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"event kind {self.kind!r}: must be one of {', '.join(EVENT_KINDS)}")

    def to_json(self) -> str:
        """Return the event as a JSON document (unknown detail values become strings)."""
        return json.dumps(to_jsonable(self), indent=2, default=str)


@dataclass
class Delivery:
    """The outcome of one send."""

    backend: str
    ok: bool
    error: str | None = None


class Notifier(ABC):
    """Sends events somewhere. Implementations must not raise from :meth:`send`."""

    backend = "abstract"

    @abstractmethod
    def send(self, event: Event) -> Delivery:
        """Deliver ``event``; report failure in the result instead of raising."""

    def _attempt(self, event: Event, deliver: Callable[[Event], None]) -> Delivery:
        try:
            deliver(event)
        except Exception as exc:  # any delivery failure becomes ok=False, by contract
            error = f"{type(exc).__name__}: {exc}"
            logger.warning(
                "notification %s %r via %s failed: %s", event.kind, event.title,
                self.backend, error,
            )
            return Delivery(self.backend, False, error)
        return Delivery(self.backend, True, None)


class NullNotifier(Notifier):
    """Drops every event (always succeeds)."""

    backend = "none"

    def send(self, event: Event) -> Delivery:  # noqa: D102
        return Delivery(self.backend, True, None)


class LogNotifier(Notifier):
    """Writes events to the ``driftloop.notify`` logger."""

    backend = "log"

    def send(self, event: Event) -> Delivery:  # noqa: D102
        return self._attempt(event, self._log)

    def _log(self, event: Event) -> None:
        level = logging.WARNING if event.kind in ("failure", "rollback") else logging.INFO
        logger.log(
            level, "[driftloop] %s: %s (model=%s run=%s) %s", event.kind, event.title,
            event.model_name, event.run_id, json.dumps(to_jsonable(event.details), default=str),
        )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirected POST would be replayed as GET by urllib; report the 3xx instead.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookNotifier(Notifier):
    """POSTs the event as JSON; any status outside 2xx is a failed delivery.

    Args:
        url: An ``http://`` or ``https://`` URL.
        timeout_s: Connect and read timeout in seconds.
    """

    backend = "webhook"

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ConfigError(f"notify.webhook_url {url!r}: must be an http(s) URL")
        self.url = url
        self.timeout_s = timeout_s
        self._opener = urllib.request.build_opener(_NoRedirect)

    def send(self, event: Event) -> Delivery:  # noqa: D102
        return self._attempt(event, self._post)

    def _post(self, event: Event) -> None:
        request = urllib.request.Request(
            self.url, data=event.to_json().encode("utf-8"), method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            exc.close()
            status = exc.code
        if not 200 <= status < 300:
            raise RuntimeError(f"{self.url} answered HTTP {status}")


class SmtpNotifier(Notifier):
    """Sends a plain-text e-mail per event (no TLS or login: meant for a relay).

    Args:
        host: SMTP server.
        port: SMTP port.
        sender: From address.
        recipients: To addresses (at least one).
        timeout_s: Socket timeout in seconds.
    """

    backend = "smtp"

    def __init__(
        self, host: str, port: int, sender: str, recipients: Sequence[str],
        timeout_s: float = 10.0,
    ) -> None:
        if not recipients:
            raise ConfigError("notify.recipients: at least one is required for smtp")
        self.host = host
        self.port = port
        self.sender = sender
        self.recipients = list(recipients)
        self.timeout_s = timeout_s

    def message(self, event: Event) -> EmailMessage:
        """Return the e-mail for ``event``."""
        msg = EmailMessage()
        # Header values must be one line; a newline in a title would break the header.
        msg["Subject"] = " ".join(f"[driftloop] {event.kind}: {event.title}".split())
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        details = json.dumps(to_jsonable(event.details), indent=2, default=str)
        msg.set_content(
            f"{event.title}\n\n"
            f"kind:  {event.kind}\nmodel: {event.model_name}\n"
            f"run:   {event.run_id or '-'}\ntime:  {event.time}\n\n"
            f"details:\n{details}\n"
        )
        return msg

    def send(self, event: Event) -> Delivery:  # noqa: D102
        return self._attempt(event, self._mail)

    def _mail(self, event: Event) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
            smtp.send_message(self.message(event), self.sender, self.recipients)


def make_notifier(config: NotifyConfig) -> Notifier:
    """Return the notifier for ``config.backend``."""
    if config.backend == "none":
        return NullNotifier()
    if config.backend == "webhook":
        return WebhookNotifier(str(config.webhook_url), config.timeout_s)
    if config.backend == "smtp":
        return SmtpNotifier(
            config.smtp_host, config.smtp_port, config.sender, config.recipients,
            config.timeout_s,
        )
    return LogNotifier()


def notify_or_raise(notifier: Notifier, event: Event, *, required: bool) -> Delivery:
    """Send ``event``; when ``required``, a failed delivery stops the caller.

    Raises:
        NotificationError: ``required`` is true and the delivery failed.
    """
    try:
        delivery = notifier.send(event)
    except Exception as exc:  # a third-party notifier broke the no-raise contract
        logger.warning("notifier %s raised: %s", type(notifier).__name__, exc)
        delivery = Delivery(getattr(notifier, "backend", "unknown"), False, str(exc))
    if required and not delivery.ok:
        raise NotificationError(
            f"notification {event.kind} {event.title!r} via {delivery.backend} failed "
            f"({delivery.error}); it is required, so the step stops here"
        )
    return delivery
