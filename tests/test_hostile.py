"""Bad input, as an operator (or a script) gives it: every command and every way into the configuration.

One table: each row is a command line (with, at times, a config file or environment of its own), the exit code it
must end with (0 ok, 1 failed or refused, 2 usage, 69 AWS unreachable, 78 invalid configuration), the one line it
must say (the last line, for a usage error: argparse prints the usage first), and that nothing was written: the
table and the bucket are exactly as before. No row may end in "internal error" or a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from monitor import cli
from monitor.aws import schema
from monitor.aws.dynamo import DynamoStore
from monitor.config import TableConfig
from tests.conftest import REGION, register
from tests.lab import BUCKET, Lab

STEP = '[[pipeline.steps]]\nname = "work"\ncommand = ["true"]\n'

# (name, argv after --config, exit code, what the one line says, config text or None for the site's, environment)
ROWS: list[tuple[str, list[str], int, str, str | None, dict[str, str]]] = [
    ("register: again", ["register", "ws-good"], 0, "ws-good is already registered", None, {}),
    ("set-priority: the same", ["set-priority", "ws-good", "normal"], 0, "already has priority normal", None, {}),
    (
        "register: up and out",
        ["register", "ok-id", "--prefix", "../../ok-id/"],
        1,
        "is not a folder the scanner",
        None,
        {},
    ),
    (
        "register: dot-dot inside",
        ["register", "ok-id", "--prefix", "worksets/x/../ok-id/"],
        1,
        "use worksets/ok-id/",
        None,
        {},
    ),
    ("register: absolute", ["register", "ok-id", "--prefix", "/worksets/ok-id/"], 1, "use worksets/ok-id/", None, {}),
    (
        "register: outside the prefixes",
        ["register", "ok-id", "--prefix", "other/ok-id/"],
        1,
        "a [scan] prefix",
        None,
        {},
    ),
    ("register: a newline", ["register", "ok-id", "--prefix", "worksets/\nx/ok-id/"], 1, "\\nx", None, {}),
    (
        "register: very long",
        ["register", "ok-id", "--prefix", "w" * 1200 + "/ok-id/"],
        1,
        "'... is not a folder the scanner",
        None,
        {},
    ),
    ("register: shell in the id", ["register", "x;$(id)"], 2, "invalid workset id", None, {}),
    ("register: no folder", ["register", "ws-none"], 1, "no daylily.ready yet", None, {}),
    ("register: invalid folder", ["register", "ws-broken"], 1, "stage_samples.tsv: required file is missing", None, {}),
    ("register: bad priority", ["register", "ok-id", "--priority", "high"], 2, "invalid priority 'high'", None, {}),
    ("register: bad bucket", ["register", "ok-id", "--bucket", "Bad_Bucket"], 2, "invalid S3 bucket name", None, {}),
    ("show: unknown", ["show", "ghost"], 1, "workset ghost is not registered", None, {}),
    ("history: unknown", ["history", "ghost"], 1, "workset ghost is not registered", None, {}),
    ("logs: unknown", ["logs", "ghost"], 1, "workset ghost is not registered", None, {}),
    ("history: a fleet lookalike", ["history", "#fleets"], 2, "argument ID:", None, {}),
    ("logs: none yet", ["logs", "ws-good"], 1, "no step log for ws-good in s3://", None, {}),
    ("logs: no such step", ["logs", "ws-good", "--step", "nope"], 1, "no log of step nope for ws-good", None, {}),
    ("logs: a bad id", ["logs", "../x"], 2, "argument ID:", None, {}),
    ("logs: interval zero", ["logs", "ws-good", "-f", "--interval", "0"], 2, "between 0.1 and 3600", None, {}),
    ("watch: interval nan", ["watch", "--interval", "nan"], 2, "between 0.1 and 3600 seconds, got 'nan'", None, {}),
    ("retry: unknown", ["retry", "ghost"], 1, "workset ghost is not registered", None, {}),
    ("cancel: unknown", ["cancel", "ghost"], 1, "workset ghost is not registered", None, {}),
    ("ignore: unknown", ["ignore", "ghost"], 1, "workset ghost is not registered", None, {}),
    ("release: no reason", ["release", "ghost"], 2, "the following arguments are required: --reason", None, {}),
    ("set-priority: unknown", ["set-priority", "ghost", "urgent"], 1, "workset ghost is not registered", None, {}),
    ("set-priority: bad value", ["set-priority", "ghost", "high"], 2, "invalid priority 'high'", None, {}),
    ("list: bad state", ["list", "--state", "running"], 2, "invalid state 'running'", None, {}),
    ("list: bad limit", ["list", "--limit", "abc"], 2, "must be a whole number, got 'abc'", None, {}),
    ("list: zero limit", ["list", "--limit", "0"], 2, "must be at least 1", None, {}),
    ("list: bad position", ["list", "--after", "ready:1:x"], 2, "is not a position printed by `list`", None, {}),
    ("list: bad since", ["list", "--since", "yesterday"], 2, "is neither a duration", None, {}),
    ("report: bad since", ["report", "--since", "7x"], 2, "is neither a duration", None, {}),
    ("report: bad format", ["report", "--format", "xlsx"], 2, "invalid choice: 'xlsx'", None, {}),
    ("validate: no folder", ["validate"], 2, "one of the arguments S3_URI --prefix is required", None, {}),
    ("validate: not a URI", ["validate", "lab-bucket/w/ws-1/"], 2, "is not an s3://BUCKET/PREFIX/NAME/", None, {}),
    ("validate: bad bucket", ["validate", "s3://Bad_Bucket/w/ws-1/"], 2, "invalid S3 bucket name", None, {}),
    ("validate: a whole bucket", ["validate", "s3://lab-bucket/"], 2, "names a whole bucket", None, {}),
    ("validate: escape in key", ["validate", "s3://lab-bucket/w/\x1b[2J/"], 2, "is not a usable S3 key", None, {}),
    ("validate: both", ["validate", "s3://lab-bucket/w/x/", "--prefix", "w/x/"], 2, "not allowed with", None, {}),
    (
        "validate: no bucket",
        ["validate", "s3://no-such-bucket-zz/w/x/"],
        1,
        "bucket no-such-bucket-zz does not",
        None,
        {},
    ),
    ("run: a step alone", ["run", "--step", "work"], 2, "run --step needs --workset ID", None, {}),
    ("run: once and one", ["run", "--once", "--workset", "ws-good"], 2, "not allowed with argument --once", None, {}),
    ("run: bad id", ["run", "--workset", "ws/1"], 2, "invalid workset id 'ws/1'", None, {}),
    ("run: unknown workset", ["run", "--workset", "ghost"], 1, "workset ghost is not registered", None, {}),
    ("run: unknown step", ["run", "--workset", "ws-good", "--step", "wrk"], 1, "not a step of [[pipeline", None, {}),
    ("retry: nothing", ["retry"], 2, "give one or more workset ids, - to read them from stdin, or filters", None, {}),
    ("retry: ids and filters", ["retry", "ws-good", "--state", "error"], 2, "ids or filters", None, {}),
    ("retry: - and ids", ["retry", "-", "ws-good"], 2, "- (ids on standard input) stands alone", None, {}),
    ("retry: bad id among", ["retry", "ws-good", "x;rm"], 2, "invalid workset id 'x;rm'", None, {}),
    ("retry: bad since", ["retry", "--since", "soon"], 2, "is neither a duration", None, {}),
    ("cancel: no --yes", ["cancel", "--state", "ready"], 1, "select 1 workset(s) (ws-good); add --yes", None, {}),
    ("cancel: --yes with ids", ["cancel", "ws-good", "--yes"], 2, "--yes is for a filter's selection", None, {}),
    ("ignore: bad state", ["ignore", "--state", "done", "--yes"], 2, "invalid state 'done'", None, {}),
    ("set-priority: no ids", ["set-priority", "urgent"], 2, "give one or more workset ids", None, {}),
    ("defer: no time", ["defer", "ws-good"], 2, "the following arguments are required: --until", None, {}),
    (
        "defer: a bare duration",
        ["defer", "ws-good", "--until", "5m"],
        2,
        "a duration from now needs a + (+5m)",
        None,
        {},
    ),
    ("defer: not a time", ["defer", "ws-good", "--until", "tonight"], 2, "is neither +DURATION", None, {}),
    ("defer: unknown", ["defer", "ghost", "--until", "+1h"], 1, "workset ghost is not registered", None, {}),
    ("register: bad not-before", ["register", "ok-id", "--not-before", "soon"], 2, "is neither +DURATION", None, {}),
    ("pause: a stray argument", ["pause", "now"], 2, "unrecognized arguments: now", None, {}),
    ("resume: a stray option", ["resume", "--force"], 2, "unrecognized arguments: --force", None, {}),
    ("import: no file", ["import", "/nonexistent/backup.jsonl"], 1, "/nonexistent/backup.jsonl: cannot read", None, {}),
    ("import: empty file", ["import", "{tmp}/empty.jsonl"], 1, "empty: not a workset-monitor export", None, {}),
    ("import: not an export", ["import", "{tmp}/garbage.jsonl"], 1, "line 1: not JSON", None, {}),
    ("export: no such folder", ["export", "--out", "/nonexistent/x.jsonl"], 1, "/nonexistent/x.jsonl", None, {}),
    ("migrate: bad choice", ["migrate", "--in-flight", "bogus"], 2, "invalid choice: 'bogus'", None, {}),
    (
        "healthcheck: nobody there",
        ["healthcheck", "--url", "http://127.0.0.1:9/healthz"],
        1,
        "no answer from",
        None,
        {},
    ),
    ("notify-test: no channel", ["notify-test"], 1, "no notification channel is configured", None, {}),
    ("unknown command", ["frobnicate"], 2, "invalid choice: 'frobnicate'", None, {}),
    ("config: missing file", ["list"], 78, "config file not found", "<missing>", {}),
    ("config: bad TOML", ["list"], 78, "invalid TOML", "[aws\n", {}),
    ("config: unknown key", ["list"], 78, "aws.regoin: unknown key", "[aws]\nregoin = 'x'\n", {}),
    ("config: bad value", ["list"], 78, "line 2: lease.duration_s", "[lease]\nduration_s = -1\n", {}),
    (
        "config: secret passed to steps",
        ["check-config"],
        78,
        "never reach a step",
        "[run]\nstep_env_passthrough = ['WORKSET_MONITOR_NOTIFY__WEBHOOK__SECRET']\n" + STEP,
        {},
    ),
    ("config: no steps", ["run"], 78, "no [[pipeline.steps]]", "[scan]\nbucket = 'lab-bucket'\n", {}),
    ("env: section typo", ["list"], 78, "unknown section 'scann'", None, {"WORKSET_MONITOR_SCANN__BUCKET": "lab"}),
    (
        "env: not a setting",
        ["list"],
        78,
        "WORKSET_MONITOR_BUCKET: not a setting",
        None,
        {"WORKSET_MONITOR_BUCKET": "x"},
    ),
    (
        "env: bad number",
        ["list"],
        78,
        "WORKSET_MONITOR_SCAN__INTERVAL_S: scan.interval_s",
        None,
        {"WORKSET_MONITOR_SCAN__INTERVAL_S": "often"},
    ),
    (
        "env: broken JSON list",
        ["list"],
        78,
        "WORKSET_MONITOR_SCAN__PREFIXES: scan.prefixes: not valid JSON",
        None,
        {"WORKSET_MONITOR_SCAN__PREFIXES": '["a/",'},
    ),
    ("env: not a section", ["list"], 78, "notify.sns: Input should be", None, {"WORKSET_MONITOR_NOTIFY__SNS": "{oops"}),
    ("AWS unreachable", ["list"], 69, "127.0.0.1:9", "<unreachable>", {}),
]


@pytest.fixture
def site(aws_endpoint: str, tmp_path: Path) -> dict[str, Any]:
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=aws_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    lab = Lab(s3)
    lab.workset("ws-broken", files={"stage_samples.tsv": None})
    lab.workset("ws-good")
    dynamodb = boto3.client("dynamodb", region_name=REGION, endpoint_url=aws_endpoint)
    schema.ensure_table(dynamodb, TableConfig(name="hostile"))
    register(DynamoStore(dynamodb, "hostile"), "ws-good")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "garbage.jsonl").write_text("rm -rf /\n")
    config = tmp_path / "config.toml"
    config.write_text(
        f'[aws]\nregion = "{REGION}"\nendpoint_url = "{aws_endpoint}"\nmax_attempts = 2\n'
        f'[table]\nname = "hostile"\n[scan]\nbucket = "{BUCKET}"\nprefixes = ["worksets/"]\n' + STEP
    )
    return {"config": config, "s3": s3, "dynamodb": dynamodb, "endpoint": aws_endpoint, "tmp": tmp_path}


def _world(site: dict[str, Any]) -> tuple[str, list[str]]:
    items = site["dynamodb"].scan(TableName="hostile")["Items"]
    keys = [o["Key"] for o in site["s3"].list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    return json.dumps(sorted(items, key=json.dumps), sort_keys=True), sorted(keys)


@pytest.mark.parametrize(("name", "argv", "code", "says", "text", "env"), ROWS, ids=[row[0] for row in ROWS])
def test_bad_input_is_refused_plainly_and_writes_nothing(
    site: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    argv: list[str],
    code: int,
    says: str,
    text: str | None,
    env: dict[str, str],
) -> None:
    config = site["config"]
    if text == "<missing>":
        config = site["tmp"] / "missing.toml"
    elif text == "<unreachable>":
        config = site["tmp"] / "unreachable.toml"
        config.write_text(site["config"].read_text().replace(site["endpoint"], "http://127.0.0.1:9"))
    elif text is not None:
        config = site["tmp"] / "own.toml"
        config.write_text(text)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    before = _world(site)
    args = [arg.replace("{tmp}", str(site["tmp"])) for arg in argv]
    try:
        got = cli.main(["--config", str(config), *args])
    except SystemExit as exc:  # argparse's usage errors
        got = int(exc.code or 0)
    out, err = capsys.readouterr()
    said = out if code == 0 else err  # a refusal on stderr, stdout empty; a no-op's answer on stdout
    lines = said.strip().splitlines()
    assert got == code, (name, got, err)
    assert "internal error" not in err and "Traceback" not in err, err
    assert lines and says in lines[-1], (name, said)
    assert len(lines) == 1 or code == 2, (name, said)  # one line; a usage error prints the usage first
    assert (out if code else err) == "", (name, out, err)
    assert _world(site) == before, f"{name}: something was written"
