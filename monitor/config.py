"""The settings tree (DESIGN §9): one TOML file, environment overrides, secrets from a directory.

Precedence, highest first: ``WORKSET_MONITOR_<SECTION>__<KEY>`` environment variables, secret files, the TOML file,
then the defaults below. A secret file is named like its environment variable (case-insensitive), e.g.
``workset_monitor_notify__linear__api_key`` in ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``) or
``/run/secrets`` (Docker secrets).

Guarantees: every section forbids unknown keys; every problem is reported as one line naming the file, the line
(when it can be found) or the environment variable, and the dotted key; secret values never appear in messages
or in ``redacted()``. Nothing else in the program reads the environment for settings.
"""

from __future__ import annotations

import os
import re
import stat
import string
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)
from pydantic_settings.sources.utils import parse_env_vars

from monitor import errors
from monitor.model import NOTIFIABLE_EVENTS, EventType, Priority, check_bucket

ENV_PREFIX = "WORKSET_MONITOR_"
ENV_CONFIG_PATH = "WORKSET_MONITOR_CONFIG"
DEFAULT_CONFIG_PATH = Path("/etc/workset-monitor/config.toml")
DOCKER_SECRETS_DIR = Path("/run/secrets")
DEFAULT_METRICS_PORT = 10090  # Prometheus' default-port list is full below 10000

STEP_PLACEHOLDERS = frozenset({"workset_id", "bucket", "prefix", "s3_uri", "attempt", "epoch"})

Seconds = Annotated[float, Field(gt=0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class AwsConfig(Section):
    region: str | None = None  # else the usual AWS chain (AWS_REGION, profile, instance metadata)
    profile: str | None = None
    endpoint_url: str | None = None  # LocalStack, moto or a VPC endpoint
    max_attempts: int = Field(4, ge=1, le=10)  # total tries per AWS call, botocore "standard" retry mode
    connect_timeout_s: Seconds = 5.0
    read_timeout_s: Seconds = 10.0

    @field_validator("endpoint_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value


class TableConfig(Section):
    name: str = Field("daylily-worksets", pattern=r"^[A-Za-z0-9_.-]{3,255}$")
    billing_mode: Literal["PAY_PER_REQUEST", "PROVISIONED"] = "PAY_PER_REQUEST"
    read_capacity: int | None = Field(None, ge=1)
    write_capacity: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _capacity(self) -> TableConfig:
        if self.billing_mode == "PROVISIONED" and (self.read_capacity is None or self.write_capacity is None):
            raise ValueError("billing_mode PROVISIONED needs read_capacity and write_capacity")
        return self


class ScanConfig(Section):
    bucket: str | None = None  # required by the daemon, not by the read-only CLI commands
    prefixes: list[str] = Field(default_factory=lambda: [""])  # "" is the bucket's top level
    interval_s: Seconds = 60.0
    write_sentinels: bool = False  # also write legacy daylily.* sentinels on every transition (rollback aid)
    max_manifest_bytes: int = Field(10 << 20, ge=1024)  # a larger stage_samples.tsv makes the workset invalid
    sqs_queue_url: str | None = None  # optional: S3 notifications of daylily.ready for registration in seconds

    @field_validator("sqs_queue_url")
    @classmethod
    def _queue(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"https?://[^/\s]+/\S+", value):
            raise ValueError("must be an SQS queue URL (https://sqs.<region>.amazonaws.com/<account>/<name>)")
        return value

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str | None) -> str | None:
        return None if value is None else check_bucket(value)

    @field_validator("prefixes")
    @classmethod
    def _prefixes(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError('needs at least one prefix (use "" for the bucket\'s top level)')
        normalized = [p if p == "" or p.endswith("/") else p + "/" for p in value]
        for prefix in normalized:
            if prefix.startswith("/"):
                raise ValueError(f"prefix {prefix!r} must not start with '/'")
        if len(set(normalized)) != len(normalized):
            raise ValueError("lists the same prefix twice")
        return normalized


class LeaseConfig(Section):
    duration_s: Seconds = 60.0
    heartbeat_s: Seconds = 15.0
    sweep_interval_s: Seconds = 60.0  # how often each daemon looks for dead holders
    grace_s: float = Field(0.0, ge=0)  # extra time, beyond duration_s, a lease must look dead before a takeover

    @model_validator(mode="after")
    def _ratio(self) -> LeaseConfig:
        if self.heartbeat_s * 2 > self.duration_s:
            raise ValueError(
                f"heartbeat_s ({self.heartbeat_s:g}) must be at most half of duration_s ({self.duration_s:g}); "
                "a quarter is recommended"
            )
        return self


DEFAULT_PASSTHROUGH = ("PATH", "HOME", "LANG", "TZ")  # [run] step_env_passthrough's default
NEVER_PASSED = "WORKSET_MONITOR_"  # the daemon's own settings, secrets among them: never in a step's environment


class RunConfig(Section):
    max_concurrent: int = Field(2, ge=1)  # worksets driven at once by one daemon
    max_attempts: int = Field(3, ge=1)  # failed attempts before a workset is dead-lettered (state error)
    shutdown_grace_s: float = Field(25.0, ge=0)  # how long SIGTERM waits for running steps
    retry_backoff_base_s: Seconds = 60.0
    retry_backoff_max_s: Seconds = 3600.0
    max_fleet_concurrent: int | None = Field(None, ge=1)  # worksets in progress across all daemons
    # the daemon's environment variables its steps get besides their own WORKSET_* (NAME* for a prefix)
    step_env_passthrough: list[str] = Field(default_factory=lambda: list(DEFAULT_PASSTHROUGH))

    @field_validator("step_env_passthrough")
    @classmethod
    def _passthrough(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*\*?", name):
                raise ValueError(f"{name!r} is not an environment variable name (NAME, or NAME* for a prefix)")
            if name.upper().startswith(NEVER_PASSED):
                raise ValueError(
                    f"{name!r}: the daemon's own WORKSET_MONITOR_* settings (secrets among them) never reach a step"
                )
        return value


class StepConfig(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    command: list[str] = Field(min_length=1)  # an argv list, never a shell string
    kind: Literal["exec", "poll"] = "exec"
    timeout_s: Seconds = 3600.0  # exec: one run; poll: the whole wait for exit 0
    interval_s: Seconds = 60.0  # poll only: time between runs

    @field_validator("command")
    @classmethod
    def _placeholders(cls, value: list[str]) -> list[str]:
        for arg in value:
            try:
                names = {name for _, name, _, _ in string.Formatter().parse(arg) if name is not None}
            except ValueError as exc:
                raise ValueError(f"bad placeholder in {arg!r}: {exc}") from None
            unknown = names - STEP_PLACEHOLDERS
            if unknown:
                known = ", ".join("{" + n + "}" for n in sorted(STEP_PLACEHOLDERS))
                raise ValueError(f"unknown placeholder {{{sorted(unknown)[0]}}} in {arg!r}; known: {known}")
        return value


class PipelineConfig(Section):
    steps: list[StepConfig] = Field(default_factory=list)

    @field_validator("steps")
    @classmethod
    def _unique(cls, value: list[StepConfig]) -> list[StepConfig]:
        names = [s.name for s in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"step names must be unique; repeated: {', '.join(dupes)}")
        return value


class ChannelFilter(Section):
    """Per-channel overrides of ``[notify] events`` and ``min_priority``; unset means inherit."""

    events: list[EventType] | None = None
    min_priority: Priority | None = None

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[EventType] | None) -> list[EventType] | None:
        return None if value is None else _notifiable(value)


class SnsConfig(ChannelFilter):
    topic_arn: str = Field(pattern=r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_.-]+$")


class LinearConfig(ChannelFilter):
    api_key: SecretStr  # from a secret file or the environment, not the TOML file, in production
    team_id: str = Field(min_length=1)
    api_url: str = "https://api.linear.app/graphql"
    timeout_s: Seconds = 10.0


class WebhookConfig(ChannelFilter):
    url: SecretStr  # Slack-style webhook URLs embed a token: treated as a secret
    secret: SecretStr | None = None  # HMAC-SHA256 signing key
    timeout_s: Seconds = 10.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr) -> SecretStr:
        if not re.match(r"https?://[^/\s]+", value.get_secret_value()):
            raise ValueError("must be an http:// or https:// URL")
        return value


class NotifyConfig(Section):
    events: list[EventType] = Field(
        default_factory=lambda: [
            EventType.ERROR,
            EventType.COMPLETE,
            EventType.LEASE_EXPIRED,
            EventType.INVALID,
        ]
    )
    min_priority: Priority = Priority.LOW
    claim_s: Seconds = 60.0  # a daemon delivering an event holds it this long; a dead one's events wait this long
    sns: SnsConfig | None = None
    linear: LinearConfig | None = None
    webhook: WebhookConfig | None = None

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[EventType]) -> list[EventType]:
        return _notifiable(value)


class CloudWatchConfig(Section):
    namespace: str = Field(min_length=1, max_length=255)
    interval_s: Seconds = 60.0


class MetricsConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_METRICS_PORT, ge=0, le=65535)  # 0 picks a free port (tests)
    queue_refresh_s: Seconds = 30.0  # how often the queue gauges are read from the table
    # complete/ignored/cancelled only grow; counting them reads every one of them, so less often
    finished_refresh_s: Seconds = 900.0
    cloudwatch: CloudWatchConfig | None = None


class LogConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"  # auto: console on a terminal, JSON otherwise


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
        case_sensitive=False,
    )

    aws: AwsConfig = Field(default_factory=AwsConfig)
    table: TableConfig = Field(default_factory=TableConfig)
    scan: ScanConfig = Field(default_factory=ScanConfig)
    lease: LeaseConfig = Field(default_factory=LeaseConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    def redacted(self) -> dict[str, Any]:
        """The effective settings as plain data, secrets masked."""
        return self.model_dump(mode="json")


@dataclass(frozen=True, slots=True)
class Loaded:
    """Settings plus the file they came from (for the start-up log line and reload)."""

    settings: Settings
    path: Path
    warnings: tuple[str, ...] = ()  # said once by the CLI (and logged by the daemon); nothing is refused for them


def config_path(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Path:
    """``--config``, else ``$WORKSET_MONITOR_CONFIG``, else the system default."""
    env = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    if env.get(ENV_CONFIG_PATH):
        return Path(env[ENV_CONFIG_PATH])
    return DEFAULT_CONFIG_PATH


def require_pipeline(settings: Settings, path: object) -> None:
    """What runs worksets (``run``) and what checks a daemon's config (``check``, ``check-config``) needs the
    pipeline declared: with no ``[[pipeline.steps]]`` every workset would be marked complete without anything run.
    ``[pipeline] steps = []`` declares an empty one on purpose (registration and notification only)."""
    if "steps" not in settings.pipeline.model_fields_set:
        raise errors.ConfigError(
            f"{path}: no [[pipeline.steps]]: run would mark every workset complete without running anything; "
            "declare the steps, or put steps = [] under [pipeline] to run none on purpose"
        )


def load(explicit: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Loaded:
    """Read, merge and validate the configuration; any problem is one ConfigError line."""
    env = os.environ if environ is None else environ
    path = config_path(explicit, env)
    text = _read(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise errors.ConfigError(f"{path}: invalid TOML: {exc}") from None
    secrets_dir = _secrets_dir(env)
    _check_environment(env, path)
    try:
        settings = _settings_class(data, secrets_dir, env)()
    except pydantic.ValidationError as exc:
        raise errors.ConfigError(f"{path}: {_describe(exc, text=text, environ=env)}") from None
    except SettingsError as exc:  # a value the environment source could not decode (_EnvSource names it)
        inner: BaseException = exc
        while isinstance(inner.__cause__, SettingsError):  # pydantic-settings wraps ours in "error parsing ..."
            inner = inner.__cause__
        raise errors.ConfigError(f"{path}: {inner}") from None
    return Loaded(settings=settings, path=path, warnings=_exposed_secrets(path, data))


SECRET_KEYS = (("notify", "linear", "api_key"), ("notify", "webhook", "url"), ("notify", "webhook", "secret"))


def _exposed_secrets(path: Path, data: dict[str, Any]) -> tuple[str, ...]:
    """A warning when the file holds a secret and every user of the host may read it."""
    try:
        readable = bool(path.stat().st_mode & stat.S_IROTH)
    except OSError:
        return ()
    held = [".".join(keys) for keys in SECRET_KEYS if _get(data, keys) is not None]
    if not readable or not held:
        return ()
    return (
        f"{path} is readable by every user and holds secrets ({', '.join(held)}): chmod 600 it (or 640 with the "
        "service's group), or move them to $CREDENTIALS_DIRECTORY or the environment",
    )


def _get(data: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _check_environment(environ: Mapping[str, str], path: Path) -> None:
    """Every ``WORKSET_MONITOR_<SECTION>__<KEY>`` names a section (a key typo is caught by validation; a section
    typo would be ignored without a word)."""
    sections = list(Settings.model_fields)  # in the file's order: the message lists them as the docs do
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper == ENV_CONFIG_PATH:
            continue
        section, nested, _ = upper.removeprefix(ENV_PREFIX).partition("__")
        if not nested:
            raise errors.ConfigError(
                f"{path}: environment {name}: not a setting (use {ENV_PREFIX}<SECTION>__<KEY>, e.g. "
                f"{ENV_PREFIX}SCAN__BUCKET, or {ENV_CONFIG_PATH})"
            )
        if section.lower() not in sections:
            raise errors.ConfigError(
                f"{path}: environment {name}: unknown section {section.lower()!r}; known: {', '.join(sections)}"
            )


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = f" (choose one with --config or ${ENV_CONFIG_PATH})"
        raise errors.ConfigError(f"{path}: config file not found{hint}") from None
    except IsADirectoryError:
        raise errors.ConfigError(f"{path}: is a directory, not a config file") from None
    except PermissionError:
        raise errors.ConfigError(f"{path}: permission denied reading the config file") from None
    except UnicodeDecodeError as exc:
        raise errors.ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _secrets_dir(environ: Mapping[str, str]) -> Path | None:
    if environ.get("CREDENTIALS_DIRECTORY"):
        return Path(environ["CREDENTIALS_DIRECTORY"])
    return DOCKER_SECRETS_DIR if DOCKER_SECRETS_DIR.is_dir() else None


class _EnvSource(EnvSettingsSource):
    """The standard environment source, reading the mapping ``load`` was given instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)

    def decode_complex_value(self, field_name: str, field: FieldInfo | None, value: Any) -> Any:
        """JSON, as pydantic-settings reads it; for a list, also a comma-separated one (``worksets/, archive/``;
        one that starts with ``[`` is JSON). A value that is neither names its variable and its key."""
        try:
            return super().decode_complex_value(field_name, field, value)  # type: ignore[arg-type]
        except ValueError:
            listed = isinstance(value, str) and not value.lstrip().startswith("[")  # "[..." means JSON: must parse
            if listed and field is not None and _is_list(field.annotation):
                return [part.strip() for part in value.split(",") if part.strip()]
            raise SettingsError(f"{self._variable(field_name)}: not valid JSON") from None

    def _variable(self, field_name: str) -> str:
        """``environment NAME: section.key`` of the variable that set ``field_name`` (the last one found)."""
        suffix = f"__{field_name}".upper()
        names = [k for k in self._environ if k.upper().startswith(ENV_PREFIX) and k.upper().endswith(suffix)]
        names += [k for k in self._environ if k.upper() == f"{ENV_PREFIX}{field_name}".upper()]
        if not names:
            return f"environment: {field_name}"
        name = names[-1]
        key = ".".join(name.upper().removeprefix(ENV_PREFIX).lower().split("__"))
        return f"environment {name}: {key}"


def _is_list(annotation: Any) -> bool:
    """Whether a field holds a list (``list[...]`` or ``list[...] | None``)."""
    if typing.get_origin(annotation) is list:
        return True
    return any(typing.get_origin(arg) is list for arg in typing.get_args(annotation))


def _settings_class(toml_data: dict[str, Any], secrets_dir: Path | None, environ: Mapping[str, str]) -> type[Settings]:
    class FromFile(Settings):
        model_config = SettingsConfigDict(title="Settings")

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, _EnvSource(settings_cls, environ)]
            if secrets_dir is not None:
                sources.append(
                    NestedSecretsSettingsSource(
                        file_secret_settings,
                        secrets_dir=secrets_dir,
                        secrets_dir_missing="ok",
                        secrets_nested_delimiter="__",
                    )
                )
            sources.append(InitSettingsSource(settings_cls, init_kwargs=toml_data))
            return tuple(sources)

    return FromFile


def _notifiable(value: list[EventType]) -> list[EventType]:
    bad = [e.value for e in value if e not in NOTIFIABLE_EVENTS]
    if bad:
        allowed = ", ".join(sorted(e.value for e in NOTIFIABLE_EVENTS))
        raise ValueError(f"cannot notify on {', '.join(bad)}; choose from {allowed}")
    return value


# --- turning a ValidationError into one line -------------------------------------------------------------------


def _describe(exc: pydantic.ValidationError, *, text: str, environ: Mapping[str, str]) -> str:
    problems = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = tuple(err["loc"])
        where = _env_source(loc, environ) or _toml_line(text, loc)
        key = _dotted(loc) or "(top level)"
        message = _FRIENDLY.get(err["type"]) or err["msg"].removeprefix("Value error, ")
        problems.append(f"{where + ': ' if where else ''}{key}: {message}")
    return "; ".join(problems)


_FRIENDLY = {
    "extra_forbidden": "unknown key (check its spelling against config.example.toml)",
    "missing": "required key is missing",
}


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _env_source(loc: tuple[int | str, ...], environ: Mapping[str, str]) -> str | None:
    """The environment variable a bad value came from, if any (the longest matching prefix of ``loc``)."""
    names = {k.upper() for k in environ}
    parts = [str(p) for p in loc if not isinstance(p, int)]
    for end in range(len(parts), 0, -1):
        name = ENV_PREFIX + "__".join(parts[:end]).upper()
        if name in names:
            return f"environment {name}"
    return None


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_.\-\"' ]+?)\s*=")


def _toml_line(text: str, loc: tuple[int | str, ...]) -> str | None:
    """Best-effort line of ``loc`` in the TOML text: the key's own line, else its table header."""
    target = [str(p) for p in loc]
    best: tuple[int, int] | None = None  # (matched length, line number)
    table: list[str] = []
    array_counts: dict[tuple[str, ...], int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            path = [p.strip().strip("\"'") for p in header.group(2).split(".")]
            if header.group(1) == "[[":
                index = array_counts.get(tuple(path), -1) + 1
                array_counts[tuple(path)] = index
                path = [*path, str(index)]
            table = path
            candidate = table
        else:
            key = _KEY.match(line)
            if not key:
                continue
            candidate = [*table, *(p.strip().strip("\"'") for p in key.group(1).split("."))]
        if candidate == target[: len(candidate)] and (best is None or len(candidate) > best[0]):
            best = (len(candidate), number)
    return f"line {best[1]}" if best else None
