"""Configuration: the example loads, precedence holds, and every mistake is one line naming file, line and key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pydantic
import pytest

from monitor import config, errors
from monitor.config import Settings
from monitor.model import EventType, Priority
from tests.conftest import ROOT

EXAMPLE = ROOT / "config.example.toml"


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(path: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(errors.ConfigError) as caught:
        config.load(path, environ or {})
    message = str(caught.value)
    assert "\n" not in message, "config errors must be one line"
    assert caught.value.exit_code == 78
    return message


def test_the_example_config_loads() -> None:
    settings = config.load(EXAMPLE, {}).settings
    assert settings.table.name == "daylily-worksets"
    assert settings.scan.prefixes == ["daylily_monitoring/active_worksets/"]
    assert [s.name for s in settings.pipeline.steps] == ["stage", "run"]
    assert settings.pipeline.steps[1].kind == "poll"


def _field_paths(model: type[pydantic.BaseModel], prefix: str = "") -> set[str]:
    paths = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        nested = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        sub = next((a for a in nested if issubclass(a, pydantic.BaseModel)), None)
        if sub is not None and name != "steps":
            paths |= _field_paths(sub, f"{prefix}{name}.")
        elif name == "steps":
            paths |= _field_paths(config.StepConfig, f"{prefix}steps.")
        else:
            paths.add(prefix + name)
    return paths


def _flatten(data: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, value in data.items():
        if isinstance(value, dict):
            paths |= _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                paths |= _flatten(item, f"{prefix}{key}.")
        else:
            paths.add(prefix + key)
    return paths


def test_the_example_documents_every_key_and_its_commented_lines_are_valid_too() -> None:
    """Uncommenting every commented key and section of the example must give a valid, complete config."""
    text = EXAMPLE.read_text()
    uncommented = re.sub(r"(?m)^# (\[[a-z._]+\]|[a-z_]+ = )", r"\1", text)
    data = tomllib.loads(uncommented)
    Settings.model_validate(data)  # every documented value is acceptable
    assert _field_paths(Settings) - _flatten(data) == set(), "keys missing from config.example.toml"


def test_an_empty_file_gives_the_documented_defaults(tmp_path: Path) -> None:
    s = config.load(write(tmp_path, ""), {}).settings
    assert (s.lease.duration_s, s.lease.heartbeat_s) == (60.0, 15.0)
    assert (s.run.max_concurrent, s.run.max_attempts, s.run.shutdown_grace_s) == (2, 3, 25.0)
    assert (s.scan.interval_s, s.scan.write_sentinels, s.scan.prefixes) == (60.0, False, [""])
    assert (s.metrics.host, s.metrics.port) == ("127.0.0.1", config.DEFAULT_METRICS_PORT)
    assert s.metrics.port >= 10000
    assert s.table.billing_mode == "PAY_PER_REQUEST"
    assert s.notify.min_priority is Priority.LOW
    assert (s.log.level, s.log.format) == ("info", "auto")


def test_path_resolution_order(tmp_path: Path) -> None:
    assert config.config_path("/x.toml", {"WORKSET_MONITOR_CONFIG": "/y.toml"}) == Path("/x.toml")
    assert config.config_path(None, {"WORKSET_MONITOR_CONFIG": "/y.toml"}) == Path("/y.toml")
    assert config.config_path(None, {}) == Path("/etc/workset-monitor/config.toml")
    path = write(tmp_path, "[scan]\ninterval_s = 5\n")
    assert config.load(None, {"WORKSET_MONITOR_CONFIG": str(path)}).settings.scan.interval_s == 5


def test_environment_overrides_the_file_and_merges_sections(tmp_path: Path) -> None:
    path = write(tmp_path, '[scan]\nbucket = "from-file"\ninterval_s = 30\n')
    env = {"WORKSET_MONITOR_SCAN__INTERVAL_S": "7", "WORKSET_MONITOR_NOTIFY__SNS__TOPIC_ARN": _ARN}
    s = config.load(path, env).settings
    assert (s.scan.bucket, s.scan.interval_s) == ("from-file", 7.0)
    assert s.notify.sns is not None and s.notify.sns.topic_arn == _ARN


_ARN = "arn:aws:sns:us-east-1:123456789012:alerts"
_LINEAR = '[notify.linear]\nteam_id = "team"\n'


def test_secrets_come_from_the_credentials_directory(tmp_path: Path) -> None:
    secrets = tmp_path / "creds"
    secrets.mkdir()
    (secrets / "workset_monitor_notify__linear__api_key").write_text("lin_api_from_file")
    path = write(tmp_path, _LINEAR)
    s = config.load(path, {"CREDENTIALS_DIRECTORY": str(secrets)}).settings
    assert s.notify.linear is not None
    assert s.notify.linear.api_key.get_secret_value() == "lin_api_from_file"
    env = {"CREDENTIALS_DIRECTORY": str(secrets), "WORKSET_MONITOR_NOTIFY__LINEAR__API_KEY": "lin_api_env"}
    s = config.load(path, env).settings
    assert s.notify.linear is not None and s.notify.linear.api_key.get_secret_value() == "lin_api_env"


def test_secrets_in_the_file_are_masked_in_the_redacted_view(tmp_path: Path) -> None:
    path = write(tmp_path, _LINEAR + 'api_key = "lin_api_TOPSECRET"\n')
    s = config.load(path, {}).settings
    assert "TOPSECRET" not in repr(s) and "TOPSECRET" not in str(s.redacted())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("surprise = 1\n", "line 1: surprise: unknown key"),
        ("[aws]\nregoin = 'x'\n", "line 2: aws.regoin: unknown key"),
        (f"[notify.sns]\ntopic_arn = '{_ARN}'\ncolour = 'red'\n", "line 3: notify.sns.colour: unknown key"),
        (
            "[[pipeline.steps]]\nname = 'a'\ncommand = ['x']\n[[pipeline.steps]]\nname = 'b'\ncommand = ['y']\n"
            "shell = true\n",
            "line 7: pipeline.steps[1].shell: unknown key",
        ),
    ],
)
def test_unknown_keys_are_errors_at_every_level(tmp_path: Path, text: str, expected: str) -> None:
    message = load_error(write(tmp_path, text))
    assert message.startswith(str(tmp_path / "config.toml") + ": ")
    assert expected in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[scan]\n\ninterval_s = 'soon'\n", "line 3: scan.interval_s: Input should be a valid number"),
        ("[lease]\nduration_s = 20\nheartbeat_s = 15\n", "lease: heartbeat_s (15) must be at most half"),
        (
            "[table]\nbilling_mode = 'PROVISIONED'\n",
            "line 1: table: billing_mode PROVISIONED needs read_capacity",
        ),
        (
            "[table]\nbilling_mode = 'CHEAP'\n",
            "line 2: table.billing_mode: Input should be 'PAY_PER_REQUEST'",
        ),
        ("[run]\nmax_concurrent = 0\n", "run.max_concurrent: Input should be greater than or equal to 1"),
        (
            "[run]\nstep_env_passthrough = ['PATH', 'WORKSET_MONITOR_NOTIFY__WEBHOOK__SECRET']\n",
            "line 2: run.step_env_passthrough: 'WORKSET_MONITOR_NOTIFY__WEBHOOK__SECRET': the daemon's own "
            "WORKSET_MONITOR_* settings (secrets among them) never reach a step",
        ),
        (
            "[run]\nstep_env_passthrough = ['PATH', 'AWS_*', 'MY VAR']\n",
            "run.step_env_passthrough: 'MY VAR' is not an environment variable name (NAME, or NAME* for a prefix)",
        ),
        ("[scan]\nbucket = 'Not_A_Bucket'\n", "scan.bucket: invalid S3 bucket name"),
        ("[notify]\nevents = ['reopened']\n", "notify.events: cannot notify on reopened"),
        (
            "[notify]\nmin_priority = 'high'\n",
            "notify.min_priority: Input should be 'urgent', 'normal' or 'low'",
        ),
        ("[[pipeline.steps]]\nname = 'a'\ncommand = ['run', '{sample}']\n", "unknown placeholder {sample}"),
        (
            "[[pipeline.steps]]\nname = 'a'\ncommand = []\n",
            "pipeline.steps[0].command: List should have at least",
        ),
        (
            "[[pipeline.steps]]\nname='a'\ncommand=['x']\n[[pipeline.steps]]\nname='a'\ncommand=['y']\n",
            "step names must be unique; repeated: a",
        ),
        ("[[pipeline.steps]]\ncommand = ['x']\n", "line 1: pipeline.steps[0].name: required key is missing"),
        ("[aws]\nendpoint_url = 'localhost:5000'\n", "aws.endpoint_url: must be an http:// or https:// URL"),
        ("[notify.sns]\ntopic = 'x'\n", "line 2: notify.sns.topic: unknown key"),
        ("[notify.sns]\ntopic_arn = 'arn:aws:sns:us-east-1:123:alerts'\n", "notify.sns.topic_arn: String should match"),
        ("[notify.linear]\napi_key = 'k'\nteam_id = ''\n", "notify.linear.team_id: String should have at least 1"),
        ("[notify.webhook]\nurl = 'hooks.slack.com/x'\n", "notify.webhook.url: must be an http:// or https:// URL"),
        ("[metrics]\nport = 70000\n", "metrics.port: Input should be less than or equal to 65535"),
    ],
)
def test_invalid_values_name_the_key_and_line(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in load_error(write(tmp_path, text))


def test_a_bad_environment_override_names_the_variable(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, ""), {"WORKSET_MONITOR_LEASE__DURATION_S": "forever"})
    assert "environment WORKSET_MONITOR_LEASE__DURATION_S: lease.duration_s" in message
    message = load_error(write(tmp_path, ""), {"WORKSET_MONITOR_SCAN__INTERVALS": "5"})
    assert "scan.intervals: unknown key" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [("worksets/", ["worksets/"]), ("a/, b/", ["a/", "b/"]), ('["a/", "b/"]', ["a/", "b/"]), ("a/,", ["a/"])],
)
def test_a_list_in_the_environment_is_comma_separated_or_json(tmp_path: Path, value: str, expected: list[str]) -> None:
    """WORKSET_MONITOR_SCAN__PREFIXES=worksets/ ended in "internal error: SettingsError", exit 1."""
    env = {"WORKSET_MONITOR_SCAN__PREFIXES": value, "WORKSET_MONITOR_NOTIFY__EVENTS": "error,complete"}
    s = config.load(write(tmp_path, ""), env).settings
    assert s.scan.prefixes == expected
    assert s.notify.events == [EventType.ERROR, EventType.COMPLETE]


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("WORKSET_MONITOR_SCANN__BUCKET", "lab", "environment WORKSET_MONITOR_SCANN__BUCKET: unknown section 'scann'"),
        ("WORKSET_MONITOR_BUCKET", "lab", "environment WORKSET_MONITOR_BUCKET: not a setting"),
        ("WORKSET_MONITOR_NOTIFY__SNS", "{oops", "environment WORKSET_MONITOR_NOTIFY__SNS: notify.sns: Input should"),
        ("WORKSET_MONITOR_SCAN__PREFIXES", '["a/",', "environment WORKSET_MONITOR_SCAN__PREFIXES: scan.prefixes"),
    ],
)
def test_an_environment_override_that_names_nothing_is_an_error(
    tmp_path: Path, name: str, value: str, expected: str
) -> None:
    """A section typo was silently ignored while a key typo was caught; a value that is not JSON for a section
    ended in an internal error."""
    assert expected in load_error(write(tmp_path, ""), {name: value})
    result = _cli("list", "--config", str(write(tmp_path, "")), env={**os.environ, name: value})
    assert result.returncode == 78 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr


def test_malformed_toml_reports_line_and_column(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, '[aws]\nregion = "us-east-1\n'))
    assert "invalid TOML" in message and "line 2, column" in message


def test_a_missing_file_says_how_to_choose_one(tmp_path: Path) -> None:
    message = load_error(tmp_path / "absent.toml")
    assert "absent.toml: config file not found" in message and "--config" in message


def test_a_directory_or_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    assert "is a directory" in load_error(tmp_path)
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"# caf\xe9\n")
    assert "not UTF-8" in load_error(bad)


def test_secrets_never_appear_in_error_messages(tmp_path: Path) -> None:
    text = '[notify.linear]\napi_key = "lin_api_SUPERSECRET"\nteam_id = 12\n[notify.webhook]\nurl = "ftp://hooks/SECRETTOKEN"\n'
    message = load_error(write(tmp_path, text))
    assert "notify.linear.team_id" in message and "notify.webhook.url" in message
    assert "SUPERSECRET" not in message and "SECRETTOKEN" not in message
    message = load_error(write(tmp_path, "[notify.linear]\nteam_id = 't'\napi_key = 42\n"))
    assert "notify.linear.api_key" in message and "42" not in message.split("api_key")[-1]


def test_prefixes_are_normalised_and_checked(tmp_path: Path) -> None:
    s = config.load(write(tmp_path, "[scan]\nprefixes = ['incoming', 'daylily/active/', '']\n"), {}).settings
    assert s.scan.prefixes == ["incoming/", "daylily/active/", ""]
    assert "must not start with '/'" in load_error(write(tmp_path, "[scan]\nprefixes = ['/abs/']\n"))
    assert "same prefix twice" in load_error(write(tmp_path, "[scan]\nprefixes = ['a', 'a/']\n"))
    assert "at least one prefix" in load_error(write(tmp_path, "[scan]\nprefixes = []\n"))


def test_channel_filters_inherit_unless_overridden(tmp_path: Path) -> None:
    text = f"[notify]\nevents = ['error']\n[notify.sns]\ntopic_arn = '{_ARN}'\nevents = ['complete', 'invalid']\n"
    s = config.load(write(tmp_path, text), {}).settings
    assert s.notify.events == [EventType.ERROR]
    assert s.notify.sns is not None and s.notify.sns.events == [EventType.COMPLETE, EventType.INVALID]
    assert s.notify.sns.min_priority is None


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "config file not found"),
        ("[aws\n", "invalid TOML"),
        ("[aws]\nregoin = 'x'\n", "aws.regoin: unknown key"),
        ("[scan]\ninterval_s = 'x'\n", "scan.interval_s"),
    ],
)
def test_the_cli_exits_78_with_one_line_and_no_traceback(tmp_path: Path, text: str | None, expected: str) -> None:
    path = tmp_path / "c.toml"
    if text is not None:
        path.write_text(text)
    result = _cli("list", "--config", str(path))
    assert result.returncode == 78, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["run", "check-config", "check"])
@pytest.mark.parametrize("text", ["", "[scan]\nbucket = 'lab'\n", "[scan]\nbucket = 'lab'\n[pipeline]\n"])
def test_a_daemon_config_without_steps_is_refused(tmp_path: Path, command: str, text: str) -> None:
    """A config without [[pipeline.steps]] was valid: run marked every workset complete ("all steps finished"),
    with dual-write on it wrote daylily.complete too, and check and check-config both passed."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    result = _cli(command, "--config", str(path), env={**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert result.returncode == 78, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{path}: no [[pipeline.steps]]" in lines[0] and "steps = []" in lines[0]


def test_an_empty_pipeline_declared_on_purpose_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[scan]\nbucket = 'lab'\n[pipeline]\nsteps = []  # registration and notification only\n")
    result = _cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "0 step(s)" in result.stdout
    assert _cli("list", "--config", str(tmp_path / "c.toml"), "--help").returncode == 0


def test_a_config_file_every_user_can_read_with_a_secret_in_it_is_warned_about(tmp_path: Path) -> None:
    """A world-readable config file holding a secret got no warning."""
    hook = '[notify.webhook]\nurl = "https://hooks.example.org/T000/B000/XOXB"\nsecret = "s3cret"\n'
    path = write(tmp_path, "[pipeline]\nsteps = []\n" + hook)
    path.chmod(0o644)
    result = _cli("check-config", "--config", str(path))
    assert result.returncode == 0
    (line,) = result.stderr.strip().splitlines()
    assert (
        f"warning: {path} is readable by every user and holds secrets (notify.webhook.url, notify.webhook.secret)"
        in line
    )
    assert "chmod 600" in line and "XOXB" not in line and "s3cret" not in line
    path.chmod(0o640)
    assert _cli("check-config", "--config", str(path)).stderr == ""
    public = write(tmp_path, "[pipeline]\nsteps = []\n")  # nothing secret in it: nothing to say
    public.chmod(0o644)
    assert _cli("check-config", "--config", str(public)).stderr == ""
