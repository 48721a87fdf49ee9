"""Discovery against S3 and DynamoDB (moto): what gets registered, what it costs, and what hostile input does."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from monitor import validation
from monitor.aws import schema
from monitor.aws.dynamo import DynamoStore
from monitor.aws.s3 import S3Source
from monitor.clock import FakeClock
from monitor.config import TableConfig
from monitor.model import EventType, Priority, State, Workset, WorksetId
from monitor.scanner import Scanner
from monitor.states import nobody
from tests.conftest import REGION, run
from tests.lab import BUCKET, Lab, manifest

TABLE = "scan-test"


@dataclass
class Env:
    lab: Lab
    store: DynamoStore
    source: S3Source
    clock: FakeClock
    sends: collections.Counter[str]

    def scanner(self, prefixes: tuple[str, ...] = ("worksets/",), **kw: Any) -> Scanner:
        kw.setdefault("notify", nobody)  # no channel configured
        return Scanner(self.store, self.source, self.clock, prefixes=list(prefixes), actor="scanner:1:0", **kw)

    def get(self, name: str) -> Workset:
        ws = run(self.store.get(WorksetId(name)))
        assert ws is not None, f"{name} is not registered"
        return ws

    def calls(self, service: str) -> int:
        return sum(n for op, n in self.sends.items() if op.startswith(service + "."))


@pytest.fixture
def env(mocked_aws: None) -> Iterator[Env]:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    schema.ensure_table(dynamodb, TableConfig(name=TABLE))
    sends: collections.Counter[str] = collections.Counter()
    for client in (s3, dynamodb):
        client.meta.events.register(
            "before-send", lambda event_name, **_: sends.update([".".join(event_name.split(".")[1:3])])
        )
    yield Env(Lab(s3), DynamoStore(dynamodb, TABLE), S3Source(s3, BUCKET), FakeClock(), sends)


def test_a_new_workset_is_registered_ready_with_its_priority(env: Env) -> None:
    env.lab.workset("ws-001", priority="urgent")
    report = run(env.scanner().scan_once())
    assert report["registered"] == 1 and report.folders == 1
    ws = env.get("ws-001")
    assert (ws.state, ws.priority, ws.s3_uri) == (State.READY, Priority.URGENT, f"s3://{BUCKET}/worksets/ws-001/")
    [event] = run(env.store.history(WorksetId("ws-001")))
    assert (event.type, event.actor) == (EventType.REGISTERED, "scanner:1:0")


def test_a_folder_without_daylily_ready_waits_then_registers(env: Env) -> None:
    env.lab.workset("ws-upload", sentinels=())
    scanner = env.scanner()
    assert run(scanner.scan_once())["pending"] == 1
    assert run(env.store.get(WorksetId("ws-upload"))) is None
    env.lab.put("worksets/ws-upload/daylily.ready", b"now")
    assert run(scanner.scan_once())["registered"] == 1


def test_daylily_ignore_always_wins(env: Env) -> None:
    env.lab.workset("ws-hands-off", sentinels=("daylily.ready", "daylily.ignore"))
    assert run(env.scanner().scan_once())["ignored"] == 1
    ws = env.get("ws-hands-off")
    assert ws.state is State.IGNORED


def test_legacy_folders_are_left_to_migrate_and_not_listed_again(env: Env) -> None:
    for name, sentinel in (
        ("old-done", "daylily.complete"),
        ("old-run", "daylily.in_progress"),
        ("old-lock", "daylily.lock"),
        ("old-fail", "daylily.error"),
    ):
        env.lab.workset(name, sentinels=("daylily.ready", sentinel))
    scanner = env.scanner()
    assert run(scanner.scan_once())["legacy"] == 4
    assert run(env.store.list()) == []
    env.sends.clear()
    run(scanner.scan_once())
    assert env.sends == {"s3.ListObjectsV2": 1}


def test_an_idle_cycle_costs_one_listing_per_prefix_and_no_dynamodb_call(env: Env) -> None:
    for i in range(30):
        env.lab.workset(f"ws-{i:03d}", prefix="a/" if i % 2 else "b/", extra_data=5)
    scanner = env.scanner(prefixes=("a/", "b/"))
    assert run(scanner.scan_once())["registered"] == 30
    env.sends.clear()
    report = run(scanner.scan_once())
    assert report.outcomes == {} and report.folders == 30
    assert env.sends == {"s3.ListObjectsV2": 2}


def test_after_a_restart_nothing_is_registered_or_listed_again(env: Env) -> None:
    for i in range(12):
        env.lab.workset(f"ws-{i:03d}", extra_data=20)
    run(env.scanner().scan_once())
    env.sends.clear()
    report = run(env.scanner().scan_once())  # a new process: it reads the known ids once
    assert report.outcomes == {}
    assert env.calls("s3") == 1  # the prefix listing, nothing inside any workset
    # one Query per state of the state index, one of the finished counters (no month has any: none more)
    assert env.sends["dynamodb.Query"] == len(State) + 1 and env.calls("dynamodb") == len(State) + 1


def test_a_workset_registered_by_another_daemon_is_not_validated_again(env: Env) -> None:
    env.lab.workset("ws-1")
    late = env.scanner()
    run(late.scan_once())  # loads its (empty) view of the table...
    other = env.scanner()
    env.lab.workset("ws-2")
    run(other.scan_once())  # ...while another daemon registers ws-2
    env.sends.clear()
    assert run(late.scan_once()).outcomes == {}
    assert env.sends == {"s3.ListObjectsV2": 1, "dynamodb.BatchGetItem": 1}


def test_the_same_name_under_a_second_prefix_is_reported_once_and_never_overwrites(env: Env) -> None:
    env.lab.workset("ws-twin", prefix="a/", priority="low")
    scanner = env.scanner(prefixes=("a/",))
    run(scanner.scan_once())
    env.lab.workset("ws-twin", prefix="b/", priority="urgent")
    both = env.scanner(prefixes=("a/", "b/"))
    assert run(both.scan_once())["duplicate"] == 1
    assert run(both.scan_once())["duplicate_known"] == 1
    assert run(env.scanner(prefixes=("a/", "b/")).scan_once())["duplicate"] == 1  # after a restart: reported...
    ws = env.get("ws-twin")
    assert (ws.prefix, ws.priority) == ("a/ws-twin/", Priority.LOW)
    events = run(env.store.history(WorksetId("ws-twin")))
    duplicates = [e for e in events if e.type is EventType.DUPLICATE]
    assert len(duplicates) == 1 and "s3://lab-bucket/b/ws-twin/" in duplicates[0].reason  # ...but recorded once


def test_one_failing_folder_does_not_stop_the_scan(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.lab.workset("ws-bad")
    env.lab.workset("ws-good")
    original = validation.inspect

    async def flaky(source: Any, *, folder: str, max_manifest_bytes: int) -> Any:
        if "ws-bad" in folder:
            raise RuntimeError("a bug triggered by this folder")
        return await original(source, folder=folder, max_manifest_bytes=max_manifest_bytes)

    monkeypatch.setattr(validation, "inspect", flaky)
    report = run(env.scanner().scan_once())
    assert (report["error"], report["registered"]) == (1, 1)
    monkeypatch.setattr(validation, "inspect", original)
    assert run(env.scanner().scan_once())["registered"] == 1  # and it is retried on the next cycle


def test_s3_uris_in_the_manifest_are_checked_too(env: Env) -> None:
    folder = "worksets/ws-uri/"
    env.lab.workset("ws-uri", files={"stage_samples.tsv": manifest(2, folder=folder, refs="s3")})
    run(env.scanner().scan_once())
    assert env.get("ws-uri").state is State.READY


def test_registration_records_the_samples_and_the_bytes_of_the_data_they_name_each_object_once(env: Env) -> None:
    """``report``'s Daylily figures, from the HEADs validation makes anyway: no request is added."""
    rows = manifest(3).decode().splitlines()
    rows.append(rows[-1].replace("\tS2\t", "\tS2b\t"))  # a fourth row naming S2's objects again
    big = b"@r\n" + b"A" * 1000 + b"\n+\n" + b"F" * 1000 + b"\n"
    files: dict[str, bytes | None] = {"stage_samples.tsv": ("\n".join(rows) + "\n").encode()}
    files["sample_data/S2_R1.fastq.gz"] = big
    env.lab.workset("ws-sized", samples=3, files=files)
    env.lab.workset("ws-bad", files={"sample_data/S1_R2.fastq.gz": None})
    env.sends.clear()
    run(env.scanner().scan_once())
    ws = env.get("ws-sized")
    assert (ws.samples, ws.data_bytes) == (4, 5 * 16 + len(big))  # 6 distinct objects, S2's counted once
    assert env.sends["s3.HeadObject"] == 6 + 4  # one HEAD per distinct object, as before (ws-bad: 4, one missing)
    assert (env.get("ws-bad").samples, env.get("ws-bad").data_bytes) == (None, None)  # invalid: not recorded


def test_listing_folders_follows_every_page(env: Env) -> None:
    for i in range(1005):
        env.lab.put(f"many/f{i:04d}/daylily.complete")
    assert len(run(env.source.folders("many/"))) == 1005


# --- hostile input ------------------------------------------------------------------------------------------------

BIG = b"\t".join([b"A"] * 3) + b"\n" + (b"x\ty\tz\n" * (50 * 1024 * 1024 // 6))
MISSING = "worksets/ws-missing-ref/sample_data/S1_R2.fastq.gz"

# (folder name, overrides of the workset's files, what the reason must say)
HOSTILE: list[tuple[str, dict[str, bytes | None], str]] = [
    ("ws;rm -rf ~", {}, "folder name 'ws;rm -rf ~' is not a valid workset id"),
    ("$(reboot)", {}, "folder name '$(reboot)' is not a valid workset id"),
    ("`id`", {}, "folder name '`id`' is not a valid workset id"),
    ("wörkset-ü", {}, r"folder name 'w\xf6rkset-\xfc' is not a valid workset id"),
    ("my workset", {}, "folder name 'my workset' is not a valid workset id"),
    ("x" * 129, {}, "is not a valid workset id"),
    ("ws-dotdot", {"stage_samples.tsv": b"SAMPLE\tR1_FQ\nS1\t../../etc/passwd\n"}, "line 2 column 2: R1_FQ"),
    ("ws-absolute", {"stage_samples.tsv": b"SAMPLE\tR1_FQ\nS1\t/etc/passwd\n"}, "must be relative to sample_data/"),
    ("ws-empty-manifest", {"stage_samples.tsv": b""}, "stage_samples.tsv line 1: the header row is missing"),
    ("ws-huge-manifest", {"stage_samples.tsv": BIG}, "stage_samples.tsv: is larger than 10485760 bytes"),
    ("ws-binary", {"stage_samples.tsv": bytes(range(256)) * 4}, "stage_samples.tsv line 1: contains NUL bytes"),
    ("ws-latin1", {"stage_samples.tsv": b"SAMPLE\tR1_FQ\nS\xe9\tx\n"}, "line 2 column 2: not UTF-8 text"),
    ("ws-no-header", {"stage_samples.tsv": b"\nS1\tx\n"}, "line 1: the header row is missing"),
    ("ws-ragged", {"stage_samples.tsv": b"A\tB\tR1_FQ\n1\t2\tS0_R1.fastq.gz\n3\t4\n"}, "line 3 column 1: 2 columns"),
    ("ws-missing-ref", {"sample_data/S1_R2.fastq.gz": None}, f"line 3 column 5: R2_FQ: s3://lab-bucket/{MISSING}"),
    ("ws-header-only", {"stage_samples.tsv": b"SAMPLE\tR1_FQ\n"}, "line 2: no sample rows"),
    ("ws-dup-column", {"stage_samples.tsv": b"R1_FQ\tr1_fq\nx\ty\n"}, "line 1 column 2: column 'r1_fq' repeats"),
    ("ws-http-ref", {"stage_samples.tsv": b"S\tR1_FQ\n1\thttp://evil.example/x\n"}, "scheme other than s3://"),
    ("ws-bad-uri", {"stage_samples.tsv": b"S\tdata_uri\n1\ts3://nobucket\n"}, "not a complete s3://bucket/key"),
    ("ws-other-bucket", {"stage_samples.tsv": b"S\tdata_uri\n1\ts3://no-such-bucket-x/k\n"}, "does not exist"),
    ("ws-bad-priority", {"daylily_info.yaml": b"name: x\npriority: asap\n"}, "daylily_info.yaml line 2 column 11"),
    ("ws-binary-info", {"daylily_info.yaml": b"\x00\x01\x02"}, "daylily_info.yaml line 1: contains NUL bytes"),
    ("ws-no-work", {"daylily_work.yaml": None}, "daylily_work.yaml: required file is missing"),
    ("ws-no-manifest", {"stage_samples.tsv": None}, "stage_samples.tsv: required file is missing"),
    (
        "ws-no-data",
        {f"sample_data/S{i}_R{r}.fastq.gz": None for i in range(2) for r in (1, 2)},
        "sample_data/: is missing or empty",
    ),
    (
        "ws-marker-only",
        {**{f"sample_data/S{i}_R{r}.fastq.gz": None for i in range(2) for r in (1, 2)}, "sample_data/": b""},
        "sample_data/: is missing or empty",
    ),
    ("ws-ctrl-path", {"stage_samples.tsv": b"S\tbam_path\n1\ta\x1bb\n"}, "control characters"),
    (
        "ws-three-problems",
        {"daylily_work.yaml": None, "stage_samples.tsv": b"A\tA\n1\n"},
        "daylily_work.yaml: required file is missing (and 2 more: `workset-monitor validate` lists them)",
    ),
]


def test_hostile_worksets_all_end_as_validation_errors_and_the_scan_goes_on(env: Env) -> None:
    for name, files, _ in HOSTILE:
        env.lab.workset(name, files=files)
    env.lab.workset("ws-crlf", files={"stage_samples.tsv": manifest(2, crlf=True)})
    env.lab.workset("ws-fine")
    scanner = env.scanner()
    report = run(scanner.scan_once())
    assert report["error"] == 0, "a hostile folder crashed its inspection"
    assert (report["invalid"], report["registered"]) == (len(HOSTILE), 2)

    by_folder = {ws.prefix: ws for ws in run(env.store.list(state=State.ERROR))}
    problems = []
    for name, _, expected in HOSTILE:
        ws = by_folder.get(f"worksets/{name}/")
        if ws is None or ws.error_category != "validation" or expected not in (ws.last_error or ""):
            problems.append(f"{name!r}: expected a validation error saying {expected!r}, got {ws}")
    assert not problems, "\n".join(problems)
    assert env.get("ws-crlf").state is State.READY and env.get("ws-fine").state is State.READY
    for ws in by_folder.values():
        [event] = run(env.store.history(ws.workset_id))
        assert event.type is EventType.INVALID and event.reason == ws.last_error
    assert run(scanner.scan_once()).outcomes == {}  # registered once, never again


def test_unusable_names_get_a_stable_safe_id(env: Env) -> None:
    env.lab.workset("bad name")
    run(env.scanner().scan_once())
    [ws] = run(env.store.list())
    assert ws.workset_id.startswith("invalid-name-") and ws.prefix == "worksets/bad name/"
    assert run(env.scanner().scan_once()).outcomes == {}  # the same id after a restart: nothing new
