"""Fault injection for tests: around a Store (scripted interleavings) and around a boto3 client (AWS failures).

``StoreSpy`` counts calls per method, can run a hook just before a call (to script "the heartbeat lands between
the sweeper's read and its write"), and can make a call fail before or after it was applied.

``FaultyClient`` wraps a real boto3 client. Per call it may raise a throttling error or an HTTP 500 (nothing
applied), or apply the call and then raise a timeout (the write landed, its response was lost) — the failures a
daemon sees once botocore's own retries are spent.

``LosingDynamoStore`` is the DynamoDB side of ``memory.Faults``: the same lost-response schedule, produced by real
read timeouts after moto applied the write, so the shared suite can hold both stores to one behaviour.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import botocore.client
import botocore.exceptions

from monitor import errors
from monitor.aws.dynamo import DynamoStore
from monitor.memory import Faults
from monitor.model import Workset, WorksetId
from monitor.states import Decision

T = TypeVar("T")


class StoreSpy:
    def __init__(self, store: Any) -> None:
        self._store = store
        self.calls: collections.Counter[str] = collections.Counter()
        self.before: dict[str, Callable[[], Awaitable[None]]] = {}
        self.fail_before: dict[str, int] = collections.defaultdict(int)  # method -> how many calls fail unapplied
        self.fail_after: dict[str, int] = collections.defaultdict(int)  # method -> how many calls fail applied

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._store, name)
        if not callable(target):
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            hook = self.before.pop(name, None)
            if hook is not None:
                await hook()
            if self.fail_before[name] > 0:
                self.fail_before[name] -= 1
                raise errors.AwsTemporaryError(f"injected: {name} throttled")
            result = await target(*args, **kwargs)
            if self.fail_after[name] > 0:
                self.fail_after[name] -= 1
                raise errors.AwsTemporaryError(f"injected: {name} applied, response lost")
            return result

        return call


_THROTTLE = {
    "Error": {"Code": "ThrottlingException", "Message": "injected"},
    "ResponseMetadata": {"HTTPStatusCode": 400},
}
_SERVER = {"Error": {"Code": "InternalServerError", "Message": "injected"}, "ResponseMetadata": {"HTTPStatusCode": 500}}
_WRITES = {"transact_write_items", "update_item", "put_item"}


class FaultyClient:
    """A boto3 client that fails a fraction of calls: throttled, server error, or applied-then-timed-out."""

    def __init__(
        self,
        client: Any,
        *,
        seed: int,
        throttle: float = 0.0,
        server_error: float = 0.0,
        lost_response: float = 0.0,
    ) -> None:
        self._client = client
        self._rng = random.Random(seed)
        self._throttle, self._server_error, self._lost_response = throttle, server_error, lost_response
        self.injected: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._client, name)
        if not callable(target) or name.startswith("_") or name in ("meta", "exceptions"):
            return target

        def call(**kwargs: Any) -> Any:
            roll = self._rng.random()
            if roll < self._throttle:
                self.injected["throttle"] += 1
                raise botocore.exceptions.ClientError(_THROTTLE, name)
            roll -= self._throttle
            if roll < self._server_error:
                self.injected["server_error"] += 1
                raise botocore.exceptions.ClientError(_SERVER, name)
            roll -= self._server_error
            result = target(**kwargs)
            if name in _WRITES and roll < self._lost_response:
                self.injected["lost_response"] += 1
                raise botocore.exceptions.ReadTimeoutError(endpoint_url="injected")
            return result

        return call


class _TimeoutWhenArmed:
    """A boto3 client whose next write, once armed, is applied and then answered with a read timeout."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.armed = False
        self.fired = False

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._client, name)
        if name not in _WRITES:
            return target

        def call(**kwargs: Any) -> Any:
            result = target(**kwargs)  # a refused write raises here, unanswered by the timeout
            if self.armed:
                self.armed, self.fired = False, True
                raise botocore.exceptions.ReadTimeoutError(endpoint_url="injected")
            return result

        return call


class LosingDynamoStore(DynamoStore):
    """A DynamoStore whose writes lose their response as ``faults`` says (schedule and rate, as MemoryStore's).

    The index cannot be made to lag on moto: ``faults.index_lag_reads`` is 0 here, whatever was asked."""

    def __init__(self, client: Any, table: str, *, faults: Faults, page_size: int | None = None) -> None:
        self._timeouts = _TimeoutWhenArmed(client)
        super().__init__(self._timeouts, table, page_size=page_size)
        self.faults = dataclasses.replace(faults, index_lag_reads=0)
        self.lost: list[tuple[str, int]] = []  # as MemoryStore.lost
        self._writes: collections.Counter[str] = collections.Counter()
        self._rng = random.Random(faults.seed)

    async def register(self, decision: Decision) -> bool:
        return await self._lossy("register", super().register(decision))

    async def commit(self, decision: Decision, **kwargs: Any) -> Workset:
        return await self._lossy("commit", super().commit(decision, **kwargs))

    async def heartbeat(self, workset_id: WorksetId, **kwargs: Any) -> int | None:
        return await self._lossy("heartbeat", super().heartbeat(workset_id, **kwargs))

    async def _lossy(self, method: str, write: Awaitable[T]) -> T:
        self._writes[method] += 1
        call = self._writes[method]
        rate = self.faults.lost_response_rate
        scheduled = call in self.faults.lost_responses.get(method, ())
        self._timeouts.armed = scheduled or bool(rate and self._rng.random() < rate)
        self._timeouts.fired = False
        try:
            return await write
        finally:
            if self._timeouts.fired:
                self.lost.append((method, call))
            self._timeouts.armed = False


@contextlib.contextmanager
def aws_calls() -> Iterator[collections.Counter[str]]:
    """Count the AWS requests made in this process meanwhile, by operation (what the user is billed for)."""
    calls: collections.Counter[str] = collections.Counter()
    original = botocore.client.BaseClient._make_api_call

    def counted(client: Any, operation: str, params: Any) -> Any:
        calls[operation] += 1
        return original(client, operation, params)

    botocore.client.BaseClient._make_api_call = counted  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        botocore.client.BaseClient._make_api_call = original  # type: ignore[method-assign]
