"""Full step logs (``[run] step_logs = "s3"``): the names, the sink's segments and flushes, what a failing S3 costs,
and the runner writing a step's exact output to S3."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import sys
import time
from typing import Any

import boto3
import pytest
from moto import mock_aws

from monitor import errors, step_log_view, step_logs
from monitor.aws.s3 import S3Logs
from monitor.clock import SystemClock
from monitor.config import StepConfig
from monitor.step_logs import RunName, Sink
from monitor.steps import Outcome, Runner
from tests.conftest import REGION

# --- names -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["stage", "a.log", "x.log.2", "7", "a-b_c.d", "log", ".log"])
@pytest.mark.parametrize("seq", [0, 1, 12])
def test_every_segment_name_reads_back_as_its_run_and_number(step: str, seq: int) -> None:
    run = RunName(epoch=14, attempt=3, step=step)
    key = run.key("worksets/ws-1/", seq)
    assert key.startswith("worksets/ws-1/.workset-monitor/logs/14-3-")
    assert step_logs.parse(key.removeprefix(step_logs.folder("worksets/ws-1/"))) == (run, seq)


@pytest.mark.parametrize("name", ["notes.txt", "1-2-.log", "x-2-a.log", "1-2-a.log.0", "1-2-a.log.01", "1-2-a b.log"])
def test_other_objects_in_the_logs_folder_are_not_taken_for_logs(name: str) -> None:
    assert step_logs.parse(name) is None


def test_runs_come_oldest_epoch_first_then_in_pipeline_order_with_their_segments_in_order() -> None:
    prefix = "w/ws/"
    keys = [
        RunName(10, 2, "analyse").key(prefix, 0),
        RunName(2, 1, "stage").key(prefix, 0),
        RunName(10, 2, "stage").key(prefix, 10),
        RunName(10, 2, "stage").key(prefix, 2),
        RunName(10, 2, "stage").key(prefix, 0),
        RunName(10, 2, "stage").key(prefix, 1),
        f"{step_logs.folder(prefix)}README",
        "w/ws/stage_samples.tsv",
    ]
    found = step_logs.step_logs({key: 5 for key in keys}, prefix, order=["stage", "analyse"])
    assert [(log.run.epoch, log.run.step) for log in found] == [(2, "stage"), (10, "stage"), (10, "analyse")]
    assert [key.rsplit(".", 1)[-1] for key in (s.key for s in found[1].segments)] == ["log", "1", "2", "10"]
    assert found[1].size == 20


# --- the sink ----------------------------------------------------------------------------------------------------


class Bucket:
    """A put that keeps every object and every upload, and fails while ``failing`` is set."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.puts: list[tuple[str, int]] = []
        self.failing: Exception | None = None

    async def put(self, key: str, body: bytes) -> None:
        self.puts.append((key, len(body)))
        if self.failing is not None:
            raise self.failing
        self.objects[key] = body

    def joined(self) -> bytes:
        found = step_logs.step_logs({k: len(v) for k, v in self.objects.items()}, "w/")
        return b"".join(self.objects[s.key] for log in found for s in log.segments)


def sink(bucket: Bucket, written: list[bool] | None = None, **kw: Any) -> Sink:
    run = RunName(1, 1, "s")
    record = written.append if written is not None else (lambda ok: None)
    return Sink(bucket.put, lambda seq: run.key("w/", seq), wrote=record, **kw)


def test_output_is_kept_byte_for_byte_in_segments_no_larger_than_the_bound() -> None:
    async def go() -> tuple[Bucket, bytes]:
        bucket = Bucket()
        out = sink(bucket, segment_bytes=1000, flush_s=60)
        data = random.Random(1).randbytes(4321)
        for start in range(0, len(data), 333):  # chunks that straddle the segment boundaries
            await out.write(data[start : start + 333])
        await out.close()
        return bucket, data

    bucket, data = asyncio.run(go())
    assert bucket.joined() == data
    assert [size for _, size in bucket.puts] == [1000, 1000, 1000, 1000, 321]  # each segment once: no flush was due
    assert max(size for _, size in bucket.puts) <= 1000


def test_a_step_that_prints_nothing_still_leaves_an_empty_log_and_an_exact_fit_no_empty_segment() -> None:
    async def go(data: bytes) -> Bucket:
        bucket = Bucket()
        out = sink(bucket, segment_bytes=100, flush_s=60)
        await out.write(data)
        await out.close()
        return bucket

    assert asyncio.run(go(b"")).objects == {"w/.workset-monitor/logs/1-1-s.log": b""}
    assert sorted(asyncio.run(go(b"x" * 200)).objects) == [
        "w/.workset-monitor/logs/1-1-s.log",
        "w/.workset-monitor/logs/1-1-s.log.1",
    ]


def test_a_running_step_s_output_is_readable_after_a_flush_interval_and_quiet_costs_nothing() -> None:
    async def go() -> tuple[list[int], list[int], Bucket]:
        bucket = Bucket()
        out = sink(bucket, flush_s=0.2)
        await out.write(b"first line\n")
        await asyncio.sleep(0.5)
        seen = [len(bucket.objects.get(RunName(1, 1, "s").key("w/"), b""))]
        quiet = [len(bucket.puts)]
        await asyncio.sleep(0.6)  # nothing new: no rewrite
        quiet.append(len(bucket.puts))
        await out.write(b"second\n")
        await asyncio.sleep(0.5)
        seen.append(len(bucket.objects[RunName(1, 1, "s").key("w/")]))
        await out.close()
        return seen, quiet, bucket

    seen, quiet, bucket = asyncio.run(go())
    assert seen == [11, 18]
    assert quiet[0] == quiet[1] == 1
    assert bucket.joined() == b"first line\nsecond\n"


def test_a_segment_s_rewrites_slow_down_as_it_grows() -> None:
    """The open segment is rewritten at most every flush_s times its size in MiB: a long, chatty step does not upload
    its growing log every flush_s."""
    times: list[float] = []

    async def go() -> list[tuple[str, int]]:
        bucket = Bucket()
        put = bucket.put

        async def timed(key: str, body: bytes) -> None:
            times.append(time.monotonic())
            await put(key, body)

        bucket.put = timed  # type: ignore[method-assign]
        out = sink(bucket, flush_s=0.1)
        for _ in range(40):  # 4 MiB over 2 s
            await out.write(b"y" * (100 << 10))
            await asyncio.sleep(0.05)
        await out.close()
        return bucket.puts

    puts = asyncio.run(go())
    rewrites = list(zip(puts[:-2], times[:-2], times[1:-1], strict=True))  # between flushes (the last is the close)
    assert len(rewrites) >= 5
    for (_, size), before, after in rewrites[1:]:
        assert after - before >= 0.1 * max(1, size / (1 << 20)) * 0.95, (size, after - before)


def test_s3_failing_loses_only_the_segment_it_could_not_take_and_says_so_in_the_next() -> None:
    async def go() -> tuple[Bucket, list[bool]]:
        bucket, written = Bucket(), []
        out = sink(bucket, written, segment_bytes=100, flush_s=60)
        await out.write(b"a" * 100)  # segment 0 written
        bucket.failing = errors.AwsError("writing s3://b/k: AccessDenied")
        await out.write(b"b" * 100)  # segment 1 lost
        bucket.failing = None
        await out.write(b"c" * 10)
        await out.close()
        return bucket, written

    bucket, written = asyncio.run(go())
    assert written == [True, False, True]
    segments = sorted(bucket.objects)
    assert len(segments) == 2 and segments[1].endswith(".log.2")
    last = bucket.objects[segments[1]]
    assert last.startswith(b"[workset-monitor: 100 bytes of output are missing here: writing s3://b/k: AccessDenied]\n")
    assert last.endswith(b"c" * 10)


def test_a_failed_flush_of_the_open_segment_is_tried_again_and_a_bug_in_s3_never_reaches_the_step() -> None:
    async def go() -> tuple[Bucket, list[bool]]:
        bucket, written = Bucket(), []
        out = sink(bucket, written, flush_s=0.1)
        bucket.failing = RuntimeError("boom")  # not even one of ours
        await out.write(b"kept\n")
        await asyncio.sleep(0.35)
        bucket.failing = None
        await out.write(b"more\n")
        await out.close()
        return bucket, written

    bucket, written = asyncio.run(go())
    assert False in written and written[-1] is True
    assert bucket.joined() == b"kept\nmore\n"


def test_a_hung_s3_holds_the_end_of_a_step_for_the_close_timeout_only() -> None:
    """The step's outcome is recorded, and a stopping daemon exits, after the log's last write: a hung S3 must not
    hold them (a flush hung in mid-upload included)."""

    async def go() -> tuple[float, list[bool]]:
        written: list[bool] = []
        hung = asyncio.Event()

        async def hang(key: str, body: bytes) -> None:
            hung.set()
            await asyncio.Event().wait()

        out = Sink(hang, lambda seq: f"k{seq}", wrote=written.append, flush_s=0.05, close_timeout_s=0.3)
        await out.write(b"x")
        await hung.wait()  # the timed flush is stuck in its upload
        started = time.monotonic()
        await out.close()
        return time.monotonic() - started, written

    took, written = asyncio.run(go())
    assert 0.25 < took < 1.0, took
    assert written == [False]


# --- the runner writes them ----------------------------------------------------------------------------------------


BIG = (
    "import random, sys; r = random.Random(7); out = sys.stdout.buffer\n"
    "for _ in range(160): out.write(r.randbytes(65536))\n"  # 10 MiB, NULs and all, no final newline
    "out.flush()\n"
)


def expected_big() -> bytes:
    r = random.Random(7)
    return b"".join(r.randbytes(65536) for _ in range(160))


@mock_aws
def test_the_runner_writes_a_10_mb_output_exactly_in_two_segments() -> None:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="logs-bucket")
    store = S3Logs(s3)
    step = StepConfig(name="big", command=[sys.executable, "-c", BIG], timeout_s=60)
    values = {
        "workset_id": "ws-1",
        "bucket": "logs-bucket",
        "prefix": "w/ws-1/",
        "s3_uri": "",
        "attempt": 1,
        "epoch": 3,
    }
    written: list[bool] = []
    runner = Runner(SystemClock(), base_env={}, logs=step_logs.opener(store, wrote=written.append))

    async def go() -> tuple[Any, dict[str, int], bytes]:
        result = await runner.run(step, values, stop=asyncio.Event())
        sizes = await store.sizes("logs-bucket", step_logs.folder("w/ws-1/"))
        found = step_logs.step_logs(sizes, "w/ws-1/")
        data = b"".join([await store.read("logs-bucket", s.key) for s in found[0].segments])
        return result, sizes, data

    result, sizes, data = asyncio.run(go())
    assert result.outcome is Outcome.DONE
    assert sorted(sizes.values()) == [(10 << 20) - (8 << 20), 8 << 20]
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(expected_big()).hexdigest()
    assert written == [True, True]


@mock_aws
def test_a_step_that_cannot_start_says_why_in_its_log() -> None:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="bb-logs")
    store = S3Logs(s3)
    step = StepConfig(name="gone", command=["/nonexistent/step"])
    values = {"workset_id": "ws", "bucket": "bb-logs", "prefix": "w/", "s3_uri": "", "attempt": 1, "epoch": 1}
    runner = Runner(SystemClock(), base_env={}, logs=step_logs.opener(store))
    result = asyncio.run(runner.run(step, values, stop=asyncio.Event()))
    assert result.outcome is Outcome.FAILED
    body = s3.get_object(Bucket="bb-logs", Key=RunName(1, 1, "gone").key("w/"))["Body"].read()
    assert body.startswith(b"[workset-monitor: could not start '/nonexistent/step'")


# --- `logs` on a terminal ------------------------------------------------------------------------------------------


class Terminal(io.TextIOWrapper):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_step_s_escapes_are_shown_not_obeyed_and_a_split_character_stays_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The log is printed as it grows, read by read; on a terminal a clear-screen sequence must not clear it, and
    an é whose two bytes arrive in two reads must not become two replacement characters."""
    body = "progress\r\x1b[2Jdone: é\tok\n".encode()
    cut = body.index("é".encode()) + 1
    reads = [body[:cut], body[cut:]]

    class Store:
        async def read(self, bucket: str, key: str, *, start: int = 0) -> bytes:
            return reads.pop(0)

    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", Terminal(raw))
    app = type("App", (), {"log_store": Store()})()
    ws = type("Ws", (), {"bucket": "b"})()
    printer = step_log_view._Printer(app, ws, whole=False)  # type: ignore[arg-type]
    run = RunName(1, 1, "s")
    asyncio.run(printer.show([step_logs.StepLog(run, (step_logs.Segment(run.key("w/"), cut),))]))
    asyncio.run(printer.show([step_logs.StepLog(run, (step_logs.Segment(run.key("w/"), len(body)),))]))
    assert raw.getvalue().decode() == "progress\\x0d\\x1b[2Jdone: é\tok\n"
