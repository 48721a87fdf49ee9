"""The known-folders file (``[run] state_dir``, monitor/known_folders.py): a restart of the daemon doing the chores
reads no registered id it knew, against S3 and DynamoDB (moto) with the calls counted; and a file that cannot be
trusted or used is never in the way."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import boto3
import pytest

from monitor import config, errors
from monitor.aws import schema
from monitor.config import TableConfig
from monitor.known_folders import KnownFolders, path_for
from monitor.model import State, WorksetId
from monitor.scanner import Found
from tests import test_scanner
from tests.conftest import REGION, run
from tests.test_scanner import TABLE, Env

env = test_scanner.env  # the fixture: S3 and DynamoDB (moto), the calls counted


def restart(env: Env, path: Path, **kw: Any) -> Any:
    """A new scanner, as after a restart, with the file at ``path``."""
    return env.scanner(memory=KnownFolders(path), **kw)


@pytest.fixture
def file(tmp_path: Path) -> Path:
    return path_for(str(tmp_path / "state"), TABLE)


def test_a_warm_restart_reads_no_registered_id_and_registers_only_what_is_new(env: Env, file: Path) -> None:
    for i in range(250):
        env.lab.workset(f"ws-{i:03d}")
    first = restart(env, file)
    assert run(first.scan_once())[Found.REGISTERED] == 250
    assert file.exists()

    env.sends.clear()
    second = restart(env, file)  # the daemon restarts: nothing new in S3
    report = run(second.scan_once())
    assert not report.outcomes and second.known == 250
    # one DescribeTable (which table is this?) and the listing of the prefix: no Query of the index, no BatchGetItem
    assert env.sends == {"dynamodb.DescribeTable": 1, "s3.ListObjectsV2": 1}, env.sends

    env.lab.workset("ws-new")
    env.sends.clear()
    third = restart(env, file)
    assert run(third.scan_once())[Found.REGISTERED] == 1
    assert env.sends["dynamodb.Query"] == 0 and env.sends["dynamodb.BatchGetItem"] == 1  # the one unknown name
    assert env.get("ws-new").state is State.READY
    env.sends.clear()
    assert not run(restart(env, file).scan_once()).outcomes  # ... and it is in the file now
    assert env.sends["dynamodb.BatchGetItem"] == 0


def test_a_folder_another_daemon_registered_meanwhile_is_looked_up_not_registered_twice(env: Env, file: Path) -> None:
    env.lab.workset("ws-a")
    run(restart(env, file).scan_once())
    env.lab.workset("ws-b")
    run(env.scanner().scan_once())  # another daemon, without the file, registers ws-b
    env.sends.clear()
    assert not run(restart(env, file).scan_once()).outcomes  # looked up (one BatchGetItem), known: nothing to do
    assert env.sends["dynamodb.BatchGetItem"] == 1
    assert [e.type.value for e in run(env.store.history(WorksetId("ws-b")))] == ["registered"]
    env.sends.clear()
    run(restart(env, file).scan_once())
    assert env.sends["dynamodb.BatchGetItem"] == 0  # learnt: in the file now


def test_a_table_created_again_is_read_whole_not_trusted_from_the_file(env: Env, file: Path) -> None:
    env.lab.workset("ws-a")
    run(restart(env, file).scan_once())
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    dynamodb.delete_table(TableName=TABLE)
    dynamodb.get_waiter("table_not_exists").wait(TableName=TABLE)
    schema.ensure_table(dynamodb, TableConfig(name=TABLE))
    env.sends.clear()
    report = run(restart(env, file).scan_once())
    assert report.outcomes == {Found.REGISTERED: 1}  # the new table did not know it: registered again
    assert env.sends["dynamodb.Query"] >= 1  # the full read of the registered ids
    assert env.get("ws-a").state is State.READY


def test_a_corrupt_file_is_logged_and_scanning_goes_on_without_it(env: Env, file: Path) -> None:
    env.lab.workset("ws-a")
    file.parent.mkdir(parents=True)
    file.write_bytes(b"not a database, just bytes" * 100)
    scanner = restart(env, file)
    assert run(scanner.scan_once()).outcomes == {Found.REGISTERED: 1}
    assert run(scanner.scan_once()).outcomes == {}
    assert scanner._memory.broken and "DatabaseError" in scanner._memory.broken


def test_an_unwritable_state_dir_is_logged_and_scanning_goes_on_without_it(env: Env, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    env.lab.workset("ws-a")
    scanner = restart(env, path_for(str(blocker), TABLE))
    assert run(scanner.scan_once()).outcomes == {Found.REGISTERED: 1}
    assert scanner._memory.broken


def test_a_file_of_another_layout_is_refilled(env: Env, file: Path) -> None:
    env.lab.workset("ws-a")
    run(restart(env, file).scan_once())
    with sqlite3.connect(file) as connection:
        connection.execute("UPDATE meta SET value = '0' WHERE key = 'format'")
    env.sends.clear()
    assert not run(restart(env, file).scan_once()).outcomes
    assert env.sends["dynamodb.Query"] >= 1  # read whole, then trusted again
    env.sends.clear()
    run(restart(env, file).scan_once())
    assert env.sends["dynamodb.Query"] == 0


def test_without_describe_table_the_file_is_not_used_and_nothing_stops(env: Env, file: Path) -> None:
    class NoDescribe:
        def __init__(self, store: Any) -> None:
            self._store = store

        def __getattr__(self, name: str) -> Any:
            return getattr(self._store, name)

        async def identity(self) -> str:
            raise errors.AwsError("AccessDeniedException: dynamodb:DescribeTable not allowed")

    env.lab.workset("ws-a")
    env.store = NoDescribe(env.store)  # type: ignore[assignment]
    scanner = restart(env, file)
    assert run(scanner.scan_once()).outcomes == {Found.REGISTERED: 1}
    assert not file.exists()


def test_state_dir_must_be_absolute(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[run]\nstate_dir = "var/lib/workset-monitor"\n')
    with pytest.raises(errors.ConfigError, match=r"run\.state_dir.*absolute path"):
        config.load(path, {})


def test_the_daemon_keeps_the_file_in_state_dir_else_in_systemd_s_state_directory(tmp_path: Path) -> None:
    from monitor.commands import known_folders

    path = tmp_path / "c.toml"
    path.write_text('[table]\nname = "lab"\n')
    settings = config.load(path, {}).settings
    assert known_folders(settings, {}) is None  # neither: no file, a restart reads the ids (as before)
    under_systemd = known_folders(settings, {"STATE_DIRECTORY": "/var/lib/workset-monitor:/var/lib/other"})
    assert under_systemd is not None and under_systemd.path == Path(
        "/var/lib/workset-monitor/known-folders-lab.sqlite3"
    )
    path.write_text('[table]\nname = "lab"\n[run]\nstate_dir = "/srv/wm"\n')
    chosen = known_folders(config.load(path, {}).settings, {"STATE_DIRECTORY": "/var/lib/workset-monitor"})
    assert chosen is not None and chosen.path == Path("/srv/wm/known-folders-lab.sqlite3")


def test_an_event_on_a_daemon_that_has_not_scanned_looks_up_one_name_not_every_id(env: Env) -> None:
    """Event mode on a daemon without the chores role (it never scans): one lookup per event, never the read of
    every registered id."""
    for i in range(5):
        env.lab.workset(f"old-{i}")
    run(env.scanner().scan_once())
    env.lab.workset("ws-1")
    scanner = env.scanner()
    env.sends.clear()
    assert run(scanner.register_if_new("worksets/", "ws-1")) is Found.REGISTERED
    assert run(scanner.register_if_new("worksets/", "ws-1")) is Found.ALREADY_REGISTERED
    assert env.sends["dynamodb.Query"] == 0 and env.sends["dynamodb.BatchGetItem"] == 2, env.sends
    assert scanner.known == 0
