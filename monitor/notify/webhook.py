"""A generic webhook: JSON with a Slack-compatible ``text`` and the structured fields, optionally signed.

Signature (when ``[notify.webhook] secret`` is set): header ``X-Workset-Monitor-Signature: t=<unix seconds>,
sha256=<hex>``, the HMAC-SHA256 of ``"<t>." + body`` with the shared secret. Receivers recompute it and reject old
timestamps to stop replays. ``X-Workset-Monitor-Event-Id`` lets them drop the duplicates at-least-once can produce.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from concurrent.futures import Executor

from monitor.config import WebhookConfig
from monitor.model import Event, Workset
from monitor.notify import http, message


class WebhookChannel:
    name = "webhook"

    def __init__(self, cfg: WebhookConfig, *, executor: Executor | None = None) -> None:
        self._cfg = cfg
        self._executor = executor  # the channel's worker threads (a pool of its own in the daemon)

    async def send(self, event: Event, ws: Workset | None) -> str:
        payload = json.dumps(
            {"text": message.slack_text(event, ws), "event": message.fields(event, ws)}, sort_keys=True
        ).encode()
        headers = {"Content-Type": "application/json", "X-Workset-Monitor-Event-Id": event.event_id}
        if self._cfg.secret is not None:
            headers["X-Workset-Monitor-Signature"] = sign(payload, self._cfg.secret.get_secret_value())
        await http.post(
            self._cfg.url.get_secret_value(),
            payload,
            headers=headers,
            timeout_s=self._cfg.timeout_s,
            executor=self._executor,
        )
        return "sent"


def sign(payload: bytes, secret: str, *, now_s: int | None = None) -> str:
    stamp = int(time.time()) if now_s is None else now_s
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={stamp},sha256={digest}"


def verify(payload: bytes, header: str, secret: str, *, max_age_s: int = 300, now_s: int | None = None) -> bool:
    """What a receiver does (and what our tests do): recompute the signature and check its age."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        stamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    expected = sign(payload, secret, now_s=stamp).split("sha256=", 1)[1]
    fresh = abs((int(time.time()) if now_s is None else now_s) - stamp) <= max_age_s
    return fresh and hmac.compare_digest(expected, parts.get("sha256", ""))
