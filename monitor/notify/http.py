"""A JSON POST with the standard library (no HTTP client dependency), run in a worker thread.

Every failure becomes a ``DeliveryError``: HTTP 429 and 5xx, timeouts and connection errors are temporary (with the
server's ``Retry-After`` or rate-limit reset when it sends one); other 4xx are permanent. Response bodies are bounded.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import functools
import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from monitor import errors

MAX_RESPONSE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


async def post(
    url: str, payload: bytes, *, headers: Mapping[str, str], timeout_s: float, executor: Executor | None = None
) -> Response:
    """POST in a thread of ``executor`` (the channel's own; asyncio's default pool if None)."""
    call = functools.partial(contextvars.copy_context().run, _post, url, payload, dict(headers), timeout_s)
    return await asyncio.get_running_loop().run_in_executor(executor, call)


def _post(url: str, payload: bytes, headers: dict[str, str], timeout_s: float) -> Response:
    request = urllib.request.Request(url, data=payload, method="POST", headers=headers)  # noqa: S310 - http(s) only
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - checked by config
            return Response(response.status, dict(response.headers), response.read(MAX_RESPONSE_BYTES))
    except urllib.error.HTTPError as exc:
        body = exc.read(MAX_RESPONSE_BYTES) if exc.fp else b""
        headers_found = {k.lower(): v for k, v in exc.headers.items()} if exc.headers else {}
        temporary = exc.code == 429 or exc.code >= 500
        raise errors.DeliveryError(
            f"HTTP {exc.code}: {body[:300].decode('utf-8', 'replace')}",
            temporary=temporary,
            retry_after_s=retry_after(headers_found) if temporary else None,
        ) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise errors.DeliveryError(f"cannot reach {_host(url)}: {reason}", temporary=True) from None


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from ``Retry-After`` (seconds or a date) or a rate-limit reset header (epoch s or ms)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    value = lowered.get("retry-after")
    if value:
        try:
            return max(float(value), 0.0)
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value)
            return max(parsed.timestamp() - time.time(), 0.0)
    for name in ("x-ratelimit-requests-reset", "x-ratelimit-complexity-reset", "x-ratelimit-reset"):
        if lowered.get(name):
            try:
                reset = float(lowered[name])
            except ValueError:
                continue
            reset = reset / 1000 if reset > 1e11 else reset  # Linear sends epoch milliseconds
            return max(reset - time.time(), 0.0) if reset > 1e9 else max(reset, 0.0)
    return None


def _host(url: str) -> str:
    return url.split("//", 1)[-1].split("/", 1)[0]
