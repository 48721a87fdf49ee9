"""Migration from legacy sentinels, on a generated bucket with every combination of the six sentinel files."""

from __future__ import annotations

import collections
import itertools
import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from monitor import cli, legacy
from monitor.aws import schema
from monitor.aws.dynamo import DynamoStore
from monitor.aws.s3 import S3Source
from monitor.clock import FakeClock
from monitor.config import TableConfig
from monitor.migration import Migration
from monitor.model import State
from monitor.states import nobody
from tests.conftest import REGION, run
from tests.lab import BUCKET, Lab

SENTINELS = (legacy.READY, legacy.LOCK, legacy.IN_PROGRESS, legacy.COMPLETE, legacy.ERROR, legacy.IGNORE)
COMBINATIONS = [c for n in range(len(SENTINELS) + 1) for c in itertools.combinations(SENTINELS, n)]
WRITES = {"PutObject", "DeleteObject", "TransactWriteItems", "PutItem", "UpdateItem", "BatchWriteItem"}


def expected(sentinels: tuple[str, ...], *, invalid: bool, in_flight: str = "skip") -> State | None:
    """What each folder must become, written out independently of the code under test."""
    present = set(sentinels)
    if legacy.IGNORE in present:
        return State.IGNORED
    if legacy.ERROR in present:
        return State.ERROR
    if legacy.COMPLETE in present:
        return State.COMPLETE
    if present & {legacy.IN_PROGRESS, legacy.LOCK}:
        return {"skip": None, "error": State.ERROR, "ready": State.ERROR if invalid else State.READY}[in_flight]
    if legacy.READY in present:
        return State.ERROR if invalid else State.READY
    return None


@pytest.fixture
def legacy_bucket(
    request: pytest.FixtureRequest, mocked_aws: None
) -> tuple[Lab, DynamoStore, collections.Counter[str], dict[str, Any]]:
    """Every combination of sentinels, ``variants`` times (the last variant with a broken manifest)."""
    variants = getattr(request, "param", 8)
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    schema.ensure_table(dynamodb, TableConfig(name="migrate"))
    lab = Lab(s3)
    folders: dict[str, Any] = {}
    for variant in range(variants):  # 64 combinations x 8 = 512 folders by default
        for index, combo in enumerate(COMBINATIONS):
            name = f"workset_{variant}_{index:02d}"
            invalid = variant == variants - 1 > 0  # every combination also once with a broken manifest
            files = {"stage_samples.tsv": b"only-a-header\n"} if invalid else {}
            if legacy.ERROR in combo:
                files[legacy.ERROR] = b"2025-10-17T09:00:00Z\tday-clone failed: cluster unreachable"
            lab.workset(name, prefix="daylily_monitoring/active_worksets/", samples=1, sentinels=combo, files=files)
            folders[name] = (combo, invalid)
    sends: collections.Counter[str] = collections.Counter()
    for client in (s3, dynamodb):
        client.meta.events.register("before-send", lambda event_name, **_: sends.update([event_name.split(".")[-1]]))
    return lab, DynamoStore(dynamodb, "migrate"), sends, folders


def migration(lab: Lab, store: DynamoStore, in_flight: str = "skip") -> Migration:
    return Migration(
        store,
        S3Source(lab.s3, BUCKET),
        FakeClock(),
        prefixes=["daylily_monitoring/active_worksets/"],
        actor="operator:test@host",
        notify=nobody,
        in_flight=in_flight,
    )  # type: ignore[arg-type]


def test_dry_run_then_apply_then_rerun(legacy_bucket: Any) -> None:
    lab, store, sends, folders = legacy_bucket
    assert len(folders) >= 500

    dry = run(migration(lab, store).plan())
    assert not WRITES & set(sends), f"the dry run wrote: {WRITES & set(sends)}"
    assert run(store.list()) == []
    assert len(dry.plans) == len(folders)
    planned = dry.by_decision()

    applied = run(migration(lab, store).apply(run(migration(lab, store).plan())))
    assert applied.mismatches == []
    assert applied.by_decision() == planned  # the dry run told the truth
    assert applied.written == sum(n for d, n in planned.items() if d.startswith(("import", "register")))

    states = {ws.workset_id: ws for ws in run(store.list())}
    wrong = []
    for name, (combo, invalid) in folders.items():
        want = expected(combo, invalid=invalid)
        got = states[name].state if name in states else None
        if got is not want:
            wrong.append(f"{name} {combo}: expected {want}, got {got}")
    assert not wrong, "\n".join(wrong[:20])
    imported_error = states["workset_0_" + f"{COMBINATIONS.index((legacy.ERROR,)):02d}"]
    assert imported_error.last_error == "migrated: day-clone failed: cluster unreachable"
    assert imported_error.error_category == "legacy"

    sends.clear()
    again = run(migration(lab, store).apply(run(migration(lab, store).plan())))
    assert again.written == 0 and again.mismatches == []
    assert not {"TransactWriteItems", "PutObject", "DeleteObject"} & set(sends)
    decisions = again.by_decision()
    assert decisions["skip: already registered"] == len(states)
    undecided = [p.workset_id for p in again.plans if p.decision == "decide"]
    assert len(undecided) == sum(
        1
        for c, _ in folders.values()
        if expected(c, invalid=False) is None and set(c) & {legacy.IN_PROGRESS, legacy.LOCK}
    )


@pytest.mark.parametrize("legacy_bucket", [2], indirect=True)
def test_in_flight_folders_wait_for_an_operator_decision(legacy_bucket: Any) -> None:
    lab, store, _, folders = legacy_bucket
    run(migration(lab, store).apply(run(migration(lab, store).plan())))
    before = {ws.workset_id for ws in run(store.list())}
    report = run(migration(lab, store, in_flight="error").apply(run(migration(lab, store, in_flight="error").plan())))
    assert report.mismatches == []
    newly = {ws.workset_id: ws for ws in run(store.list()) if ws.workset_id not in before}
    assert newly and all(ws.state is State.ERROR for ws in newly.values())
    assert all(set(folders[n][0]) & {legacy.IN_PROGRESS, legacy.LOCK} for n in newly)
    assert "left by the legacy monitor" in next(iter(newly.values())).last_error  # type: ignore[operator]


def test_the_cli_reports_counts_and_decisions(tmp_path: Path, aws_endpoint: str, capsys: Any) -> None:
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=aws_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    lab = Lab(s3)
    lab.workset("ws-new", prefix="legacy/")
    lab.workset("ws-done", prefix="legacy/", sentinels=(legacy.READY, legacy.IN_PROGRESS, legacy.COMPLETE))
    lab.workset("ws-running", prefix="legacy/", sentinels=(legacy.READY, legacy.LOCK, legacy.IN_PROGRESS))
    config = tmp_path / "c.toml"
    config.write_text(
        f'[aws]\nregion = "{REGION}"\nendpoint_url = "{aws_endpoint}"\n'
        f'[scan]\nbucket = "{BUCKET}"\nprefixes = ["legacy/"]\n'
    )
    assert cli.main(["--config", str(config), "init"]) == 0
    capsys.readouterr()

    assert cli.main(["--config", str(config), "migrate", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 folders under s3://lab-bucket/legacy/" in out and "dry run: nothing was written." in out
    assert "daylily.in_progress" in out and "--in-flight ready" in out

    assert cli.main(["--config", str(config), "migrate", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["written"] == 2 and data["mismatches"] == []
    assert data["by_decision"] == {"register as ready": 1, "import as complete": 1, "decide": 1}
    assert cli.main(["--config", str(config), "migrate"]) == 0
    assert "verified: 0 mismatches" in capsys.readouterr().out


def test_migrate_needs_a_bucket(tmp_path: Path, capsys: Any) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[aws]\nregion = "us-east-1"\n')
    assert cli.main(["--config", str(config), "migrate", "--dry-run"]) == 78
    assert "needs [scan] bucket" in capsys.readouterr().err


def test_the_summary_groups_stay_few_and_a_second_run_says_what_it_skipped(mocked_aws: None) -> None:
    """migrate's decision table was ~220 columns wide (each folder registered elsewhere or badly named its own
    group), and a second migrate reported every folder's sentinel as "(none)"."""
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    schema.ensure_table(dynamodb, TableConfig(name="migrate"))
    lab, store = Lab(s3), DynamoStore(dynamodb, "migrate")
    for i in range(6):
        lab.workset(f"ws-{i}", prefix="daylily_monitoring/active_worksets/", samples=1, sentinels=(legacy.COMPLETE,))
        lab.workset(f"bad name {i}", prefix="daylily_monitoring/active_worksets/", samples=1)
        lab.workset(f"dup-{i}", prefix="daylily_monitoring/active_worksets/", samples=1)
        lab.workset(f"dup-{i}", prefix="elsewhere/", samples=1)
    run(
        Migration(
            store, S3Source(s3, BUCKET), FakeClock(), prefixes=["elsewhere/"], actor="operator:t@h", notify=nobody
        ).apply(
            run(
                Migration(
                    store,
                    S3Source(s3, BUCKET),
                    FakeClock(),
                    prefixes=["elsewhere/"],
                    actor="operator:t@h",
                    notify=nobody,
                ).plan()
            )
        )
    )
    first = run(migration(lab, store).apply(run(migration(lab, store).plan())))
    assert dict(first.by_decision()) == {
        "import as complete": 6,
        "skip: folder name is not a valid id (the scanner registers it as invalid)": 6,
        "skip: the name is already registered from another folder": 6,
    }
    again = run(migration(lab, store).plan())
    assert dict(again.by_sentinel()) == {"(not read: registered already)": 12, "(not read: invalid name)": 6}
    assert dict(again.by_decision())["skip: already registered"] == 6
