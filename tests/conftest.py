"""Shared fixtures: fake AWS credentials (no real account is ever reachable), moto in-process and as a server on
127.0.0.1, stores for the behavioural suite, and leak checks for threads and asyncio tasks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest
from hypothesis import HealthCheck, settings

from monitor import logs
from monitor.aws.emulator import Emulator, speed_up
from monitor.ports import Store

T = TypeVar("T")

REGION = "us-east-1"
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",
}
os.environ.update(FAKE_AWS_ENV)
for _name in [k for k in os.environ if k.startswith("WORKSET_MONITOR_") or k == "CREDENTIALS_DIRECTORY"]:
    del os.environ[_name]

ROOT = Path(__file__).resolve().parent.parent
logs.configure(level="debug", fmt="json")  # library logs go through the stdlib, where pytest captures them

# `make test` is repeatable; explore further with:
#   .venv/bin/pytest --hypothesis-profile=deep tests/test_lease_properties.py
settings.register_profile(
    "ci",
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "deep", max_examples=500, stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run that also fails the test if the coroutine left tasks running."""

    async def main() -> T:
        result = await coro
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leftover, f"leaked asyncio tasks: {leftover}"
        return result

    return asyncio.run(main())


@contextlib.asynccontextmanager
async def supervising(sup: Any, *, clock: Any = None, exit_code: int = 0) -> AsyncIterator[Any]:
    """Run the supervisor ``sup`` for the body of ``async with``, then stop it as SIGTERM would and check how it
    exited (``sup.failed`` names the root task that brought it down). With a ``VirtualClock``, time moves on while it
    shuts down."""
    task = asyncio.create_task(sup.run())
    try:
        yield sup
    finally:
        sup.request_stop()
        while clock is not None and not task.done():
            await clock.run_for(1)
        code = await task
    assert code == exit_code, (code, sup.failed)


def register(store: Any, name: str, *, prefix: str = "worksets/", reason: str = "found in S3", **kw: Any) -> Any:
    """Register ``name`` as the scanner would (``kw``: more of ``actions.register``'s arguments)."""
    from monitor import actions
    from monitor.model import Priority, WorksetId
    from monitor.states import Context

    ctx = kw.pop("ctx", None) or Context(now_ms=1_000, actor="scanner:test", reason=reason)
    kw.setdefault("priority", Priority.NORMAL)
    kw.setdefault("bucket", "lab-bucket")
    return run(actions.register(store, workset_id=WorksetId(name), prefix=f"{prefix}{name}/", ctx=ctx, **kw))


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not leaked, f"test leaked threads: {[t.name for t in leaked]}"


speed_up()  # in-process moto too: per-item transaction rollback, prefix-indexed listings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that need a longer timeout first: they mostly wait on child processes (the soak, the chaos suite),
    so with ``-n auto --dist worksteal`` the other workers run the rest of the suite meanwhile."""
    items.sort(key=lambda item: -(marker.args[0] if (marker := item.get_closest_marker("timeout")) else 0))


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """One emulator (moto server, one request at a time) on a free loopback port for the whole session."""
    with Emulator(host="127.0.0.1", port=0) as emulator:
        yield emulator.endpoint


@pytest.fixture
def aws_endpoint(moto_server: str) -> str:
    """The moto server's URL, wiped clean for this test."""
    request = urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    return moto_server


@pytest.fixture
def mocked_aws() -> Iterator[None]:
    from moto import mock_aws

    with mock_aws():
        yield


@pytest.fixture
def dynamodb(mocked_aws: None) -> Any:
    return boto3.client("dynamodb", region_name=REGION)


TEST_TABLE = "worksets-test"


@pytest.fixture(params=["memory", "dynamodb"])
def make_store(request: pytest.FixtureRequest) -> Iterator[Callable[..., Store]]:
    """A factory: make_store(page_size=None, faults=None) -> a fresh, empty store of the parametrized kind.

    ``faults`` (``memory.Faults``): MemoryStore models them all; on DynamoDB (moto) lost responses are real read
    timeouts after the write was applied (``tests.faults.LosingDynamoStore``), but the index never lags: each store's
    ``faults.index_lag_reads`` says what it does."""
    from monitor.aws import schema
    from monitor.aws.dynamo import DynamoStore
    from monitor.config import TableConfig
    from monitor.memory import Faults, MemoryStore
    from tests.faults import LosingDynamoStore

    if request.param == "memory":

        def memory(page_size: int | None = None, faults: Faults | None = None) -> Store:
            return MemoryStore(faults=faults)

        yield memory
        return
    client = request.getfixturevalue("dynamodb")
    schema.ensure_table(client, TableConfig(name=TEST_TABLE))

    def dynamodb(page_size: int | None = None, faults: Faults | None = None) -> Store:
        if faults is None:
            return DynamoStore(client, TEST_TABLE, page_size=page_size)
        return LosingDynamoStore(client, TEST_TABLE, faults=faults, page_size=page_size)

    yield dynamodb


@pytest.fixture
def store(make_store: Callable[..., Store]) -> Store:
    return make_store()


# --- IAM audit: every AWS call the program makes, across the whole suite ------------------------------------------
# `make test` sets WM_TEST_IAM_AUDIT=1: at the end of the run every (service, operation) the program's own code
# called must be known to monitor/iam.py, and the policy for a configuration with every feature on must grant no
# action that no call needed. Calls made by test scaffolding (creating buckets, seeding) do not count.

_AUDIT_DIR_ENV = "WM_TEST_IAM_AUDIT_DIR"
_CALLS: set[tuple[str, str]] = set()
_OURS = str(ROOT / "monitor") + os.sep
_NOT_OURS = ("emulator.py", "demo.py", "demo_steps.py")


def _ours(frame: Any) -> bool:
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(_OURS) and not name.endswith(_NOT_OURS):
            return True
        frame = frame.f_back
    return False


def _install_recorder() -> None:
    import sys as _sys

    import botocore.client

    from monitor.aws import clients as _clients

    direct = botocore.client.BaseClient._make_api_call

    def make_api_call(self: Any, operation_name: str, api_params: Any) -> Any:
        if _ours(_sys._getframe(1)):  # a call made synchronously by our code (schema, backup, preflight)
            _CALLS.add((self.meta.service_model.service_name, operation_name))
        return direct(self, operation_name, api_params)

    threaded = _clients.call

    async def call(fn: Any, /, **kwargs: Any) -> Any:  # our calls that run in worker threads
        client = getattr(fn, "__self__", None)
        mapping = getattr(getattr(client, "meta", None), "method_to_api_mapping", {})
        if fn.__name__ in mapping:
            _CALLS.add((client.meta.service_model.service_name, mapping[fn.__name__]))
        return await threaded(fn, **kwargs)

    botocore.client.BaseClient._make_api_call = make_api_call  # type: ignore[method-assign]
    _clients.call = call  # type: ignore[assignment]


_install_recorder()


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput") and os.environ.get("WM_TEST_IAM_AUDIT") == "1":
        import tempfile

        os.environ[_AUDIT_DIR_ENV] = tempfile.mkdtemp(prefix="wm-iam-audit-")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import json as _json

    directory = os.environ.get(_AUDIT_DIR_ENV)
    if not directory:
        return
    worker = getattr(session.config, "workerinput", {}).get("workerid", "main")
    Path(directory, f"{worker}.json").write_text(_json.dumps(sorted(_CALLS)))
    if hasattr(session.config, "workerinput") or exitstatus != 0:
        return
    calls = {tuple(c) for f in Path(directory).glob("*.json") for c in _json.loads(f.read_text())}
    problems = _audit(calls)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter:
        reporter.ensure_newline()
    if problems:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter:
            reporter.write_line("IAM AUDIT FAILED:", red=True)
            for problem in problems:
                reporter.write_line(f"  {problem}", red=True)
    elif reporter:
        reporter.write_line(f"IAM audit: {len(calls)} AWS operations called by the program, all covered exactly")


def _audit(calls: set[tuple[str, ...]]) -> list[str]:
    from monitor import iam
    from monitor.config import Settings

    problems = [
        f"the program calls {s}:{o}, which monitor/iam.py does not know"
        for s, o in sorted(calls)
        if (s, o) not in iam.OPERATIONS
    ]
    needed = {a for call in calls if call in iam.OPERATIONS for a in iam.OPERATIONS[call][0]}  # type: ignore[index]
    everything = Settings.model_validate(
        {
            "scan": {
                "bucket": "b-1",
                "write_sentinels": True,
                "sqs_queue_url": "https://sqs.us-east-1.amazonaws.com/123456789012/q",
            },
            "notify": {"sns": {"topic_arn": "arn:aws:sns:us-east-1:123456789012:t"}},
            "metrics": {"cloudwatch": {"namespace": "N"}},
            "daylily": {"run_command": "dy-r", "availability_zone": "us-east-1a"},
        }
    )
    granted = iam.actions(iam.render(everything, role="admin"))
    problems += [f"the policy grants {a}, but no call of the program needed it" for a in sorted(granted - needed)]
    problems += [f"a call needs {a}, which the policy does not grant" for a in sorted(needed - granted)]
    return problems
