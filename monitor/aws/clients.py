"""boto3 clients, built once on the main thread, and the one place botocore errors become ours.

Transport problems (throttling, 5xx, dropped connections) are retried by botocore's ``standard`` mode with an
explicit attempt budget and short timeouts, so a heartbeat never waits a minute on one call. Everything that
still fails is translated by ``translate`` into the ``monitor.errors`` tree; nothing above ``monitor.aws`` sees
botocore.

Blocking calls run in worker threads. The table's calls (heartbeats, claims, holder writes) have a pool of their
own, one thread per connection of the client's pool (``table_executor``), so S3 reads or anything else that fills
asyncio's default pool can never hold a heartbeat back until its holder fences itself. ``close`` shuts it down.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions
import botocore.parsers

from monitor import errors
from monitor.config import AwsConfig

T = TypeVar("T")

_TRANSIENT = {
    "TransactionCanceledException",  # only reaches translate() when no condition failed: conflict or throttling
    "TransactionConflictException",
    "TransactionInProgressException",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "SlowDown",
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
    "RequestTimeout",
}
_ACCESS = {
    "AccessDenied",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
}
_NOT_FOUND = {"ResourceNotFoundException", "NoSuchBucket", "NoSuchKey", "NotFound", "404"}
_POOL_CONNECTIONS = 16  # per client


class Clients:
    """Lazily created, shared low-level clients (thread-safe once built) for one AWS configuration."""

    def __init__(self, cfg: AwsConfig, *, instrument: Callable[[str, Any], Any] | None = None) -> None:
        self._cfg = cfg
        self._instrument = instrument  # metrics: hooks every client's calls
        self._session: boto3.session.Session | None = None
        self._clients: dict[str, Any] = {}
        self._botocore_config = botocore.config.Config(
            retries={"mode": "standard", "total_max_attempts": cfg.max_attempts},
            connect_timeout=cfg.connect_timeout_s,
            read_timeout=cfg.read_timeout_s,
            max_pool_connections=_POOL_CONNECTIONS,
            tcp_keepalive=True,
        )
        self.table_executor = ThreadPoolExecutor(max_workers=_POOL_CONNECTIONS, thread_name_prefix="dynamodb")

    def get(self, service: str) -> Any:
        if service not in self._clients:
            try:
                if self._session is None:
                    self._session = boto3.session.Session(profile_name=self._cfg.profile, region_name=self._cfg.region)
                client = self._session.client(
                    service, endpoint_url=self._cfg.endpoint_url, config=self._botocore_config
                )
                if self._instrument is not None:
                    self._instrument(service, client)
                self._clients[service] = client
            except Exception as exc:
                raise translate(exc, what=f"creating the {service} client") from exc
        return self._clients[service]

    def close(self) -> None:
        """Stop the table's worker threads (after the calls in flight)."""
        self.table_executor.shutdown(wait=True, cancel_futures=True)


def translate(exc: BaseException, *, what: str) -> errors.MonitorError:
    """Our error for a botocore/boto3 exception raised while doing ``what``."""
    if isinstance(exc, errors.MonitorError):
        return exc
    if isinstance(exc, botocore.exceptions.NoRegionError):
        return errors.ConfigError("no AWS region: set [aws] region or AWS_REGION")
    if isinstance(exc, botocore.exceptions.ProfileNotFound):
        return errors.ConfigError(f"[aws] profile: {exc}")
    if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
        return errors.AwsUnavailable(f"{what}: no usable AWS credentials found")
    if isinstance(
        exc,
        botocore.exceptions.EndpointConnectionError
        | botocore.exceptions.ConnectionClosedError
        | botocore.exceptions.ConnectTimeoutError
        | botocore.exceptions.ReadTimeoutError,
    ):
        return errors.AwsUnavailable(f"{what}: AWS unreachable ({exc})")
    if isinstance(exc, botocore.exceptions.ClientError):
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message") or code
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _NOT_FOUND:
            return errors.NotFound(f"{what}: {message}")
        if code in _ACCESS:
            return errors.AwsError(f"{what}: access denied ({code}: {message})")
        if code in _TRANSIENT or status >= 500:
            return errors.AwsTemporaryError(f"{what}: {code} ({message}); gave up after retries")
        return errors.AwsError(f"{what}: {code}: {message}")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return errors.AwsTemporaryError(f"{what}: {exc}")
    return errors.MonitorError(f"{what}: unexpected {type(exc).__name__}: {exc}")


def error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class UnparseableResponse(botocore.exceptions.BotoCoreError):  # type: ignore[misc]  # botocore has no stubs
    """An answer botocore could not parse (a proxy's or an overloaded endpoint's plain-text 503). botocore raises
    ``ResponseParserError``, which is not a ``BotoCoreError``: re-raised as one, it is handled, and retried, like any
    other transport failure."""

    fmt = "AWS sent a response that could not be parsed: {error}"


async def call(fn: Callable[..., T], /, *, executor: Executor | None = None, **kwargs: Any) -> T:
    """Run one blocking boto3 call in a thread of ``executor`` (asyncio's default pool if None); context variables
    carry over, as with ``asyncio.to_thread``."""
    context = contextvars.copy_context()
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(context.run, fn, **kwargs))
    except botocore.parsers.ResponseParserError as exc:
        raise UnparseableResponse(error=str(exc).splitlines()[0]) from exc
