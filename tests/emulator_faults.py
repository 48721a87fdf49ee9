"""AWS that fails: the chaos suite's fault injector, a WSGI middleware around the local emulator.

Every fault is decided per request, from what the request says about itself: the ``X-Amz-Target`` header (the
DynamoDB operation), the SigV4 ``Authorization`` header (the caller's access key id and the service), the body
(only read for the one caller whose heartbeats are denied), the ``User-Agent`` (the harness's own clients, which
outages and a down service spare).
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from monitor.aws.emulator import WsgiApp

HARNESS = "chaos-harness"  # in the User-Agent of the harness's own AWS clients, which outages spare
_DYNAMODB_WRITES = ("PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem")
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/[^/]+/[^/]+/([^/]+)/")  # SigV4: access key id ... service


class Faults:
    """WSGI middleware around the emulator: throttling, server errors, and writes whose response is lost; a service
    that is down for good (``down``: the daemons' SNS channel); one daemon's heartbeats denied for a while.

    A request's caller and service come from its SigV4 ``Authorization`` header (access key id, credential scope):
    each daemon has an access key of its own (``chaos-<name>``). A heartbeat is the ``UpdateItem`` that sets
    ``heartbeat_at_ms`` (``DynamoStore.heartbeat``)."""

    def __init__(
        self,
        app: WsgiApp,
        *,
        throttle: float = 0.05,
        error: float = 0.01,
        lost: float = 0.02,
        seed: int = 0,
        hang_s: float = 2.0,
        down: frozenset[str] = frozenset(),
    ) -> None:
        """``hang_s``: how long an outage keeps a request unanswered (longer than the clients' read timeout)."""
        self._app = app
        self._hang_s = hang_s
        self._rates = (throttle, error, lost)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.enabled = True
        self.down = down  # refused whatever ``enabled`` says: down for the whole run
        self.counts: collections.Counter[str] = collections.Counter()
        self._outage_until = 0.0
        self._deny: tuple[str, float] = ("", 0.0)  # (access key id, until)
        self.answers: list[tuple[float, float]] = []  # (wall clock, seconds): each request the emulator answered
        self.faulted: list[tuple[float, str]] = []  # (wall clock, the item's pk): a DynamoDB item request failed

    def deny_heartbeats(self, access_key: str, seconds: float) -> None:
        """From now on, for ``seconds``, answer the heartbeats of the daemon with this access key AccessDenied."""
        self._deny = (access_key, time.monotonic() + seconds)

    def outage(self, seconds: float) -> None:
        """From now on, for ``seconds``, no request (but the harness's) gets an answer before its client gives up."""
        self._outage_until = time.monotonic() + seconds

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if time.monotonic() < self._outage_until and HARNESS not in environ.get("HTTP_USER_AGENT", ""):
            with self._lock:
                self.counts["unanswered"] += 1
            time.sleep(self._hang_s)  # not applied; the caller has timed out and hung up by now
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"outage"]
        key, scope = (_CREDENTIAL.findall(environ.get("HTTP_AUTHORIZATION", "")) or [("", "")])[0]
        if scope in self.down and HARNESS not in environ.get("HTTP_USER_AGENT", ""):
            return self._fail(start_response, scope, "channel_down")
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if self._denied(key, target, environ):
            return self._fail(start_response, "dynamodb", "heartbeat_denied")
        service = "dynamodb" if target.startswith("DynamoDB_") else "s3"
        write = target.endswith(_DYNAMODB_WRITES) if service == "dynamodb" else environ["REQUEST_METHOD"] != "GET"
        throttle, error, lost = self._rates
        with self._lock:
            roll, lose = self._rng.random(), self._rng.random()
        if self.enabled and roll < throttle:
            self._note_item(environ, service)
            return self._fail(start_response, service, "throttled")
        if self.enabled and roll < throttle + error:
            self._note_item(environ, service)
            return self._fail(start_response, service, "server_error")
        if self.enabled and write and lose < lost:
            self._note_item(environ, service)
            list(self._app(environ, lambda *_: None))  # applied...
            return self._fail(start_response, service, "response_lost")  # ...but the caller never hears so
        began = time.monotonic()  # the wait for the serialized emulator, and its work
        answer = list(self._app(environ, start_response))
        self.answers.append((time.time(), time.monotonic() - began))
        return answer

    def _denied(self, key: str, target: str, environ: dict[str, Any]) -> bool:
        denied_key, until = self._deny
        if key != denied_key or time.monotonic() >= until or not target.endswith(".UpdateItem"):
            return False
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)  # the emulator reads it again
        with contextlib.suppress(ValueError, AttributeError):
            return "heartbeat_at_ms" in json.loads(body).get("UpdateExpression", "")
        return False

    def _note_item(self, environ: dict[str, Any], service: str) -> None:
        """Remember which item (its workset: the partition key) a failed DynamoDB request was about, if one."""
        if service != "dynamodb":
            return
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)  # the emulator may read it
        with contextlib.suppress(ValueError, AttributeError, KeyError, TypeError):
            self.faulted.append((time.time(), json.loads(body)["Key"]["pk"]["S"]))

    def _fail(self, start_response: Callable[..., Any], service: str, kind: str) -> list[bytes]:
        with self._lock:
            self.counts[kind] += 1
        if service == "dynamodb":
            code, status = {
                "throttled": ("ThrottlingException", "400 Bad Request"),
                "heartbeat_denied": ("AccessDeniedException", "400 Bad Request"),
            }.get(kind, ("InternalServerError", "500 Internal Server Error"))
            body = json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": "injected"})
            start_response(status, [("Content-Type", "application/x-amz-json-1.0")])
        elif service != "s3":  # the query protocol (SNS): a temporary refusal, which the caller retries
            body = (
                "<ErrorResponse><Error><Type>Receiver</Type><Code>ServiceUnavailable</Code>"
                "<Message>injected: down</Message></Error><RequestId>chaos</RequestId></ErrorResponse>"
            )
            start_response("503 Service Unavailable", [("Content-Type", "text/xml")])
        else:
            code = "SlowDown" if kind == "throttled" else "InternalError"
            status = "503 Slow Down" if kind == "throttled" else "500 Internal Server Error"
            body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>"
            start_response(status, [("Content-Type", "application/xml")])
        return [body.encode()]
