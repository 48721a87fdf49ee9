"""Shared fixtures: fake AWS credentials (no real account is ever reachable), moto in-process and as a server on
127.0.0.1, stores for the behavioural suite, and leak checks for threads and asyncio tasks."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
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
    """A factory: make_store(page_size=None) -> a fresh, empty store of the parametrized kind."""
    from monitor.aws import schema
    from monitor.aws.dynamo import DynamoStore
    from monitor.config import TableConfig
    from monitor.memory import MemoryStore

    if request.param == "memory":
        yield lambda page_size=None: MemoryStore()
        return
    client = request.getfixturevalue("dynamodb")
    schema.ensure_table(client, TableConfig(name=TEST_TABLE))
    yield lambda page_size=None: DynamoStore(client, TEST_TABLE, page_size=page_size)


@pytest.fixture
def store(make_store: Callable[..., Store]) -> Store:
    return make_store()
