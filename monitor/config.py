"""The settings tree (DESIGN §9): one TOML file, environment overrides, secrets from a directory.

Precedence, highest first: ``WORKSET_MONITOR_<SECTION>__<KEY>`` environment variables, secret files, the TOML file,
then the defaults (``monitor.sections``). A secret file is named like its environment variable (case-insensitive), e.g.
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
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
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
from monitor.sections import (  # re-exported: the settings' sections are importable from here
    DEFAULT_CONFIG_PATH,
    DEFAULT_METRICS_PORT,
    DEFAULT_PASSTHROUGH,
    DOCKER_SECRETS_DIR,
    ENV_CONFIG_PATH,
    ENV_PREFIX,
    NEVER_PASSED,
    STEP_PLACEHOLDERS,
    AwsConfig,
    ChannelFilter,
    CloudWatchConfig,
    DaylilyConfig,
    LeaseConfig,
    LinearConfig,
    LogConfig,
    MetricsConfig,
    NotifyConfig,
    PipelineConfig,
    RunConfig,
    ScanConfig,
    Seconds,
    Section,
    Settings,
    SnsConfig,
    StepConfig,
    TableConfig,
    WebhookConfig,
)

__all__ = [  # with the sections re-exported from monitor.sections
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_METRICS_PORT",
    "DEFAULT_PASSTHROUGH",
    "DOCKER_SECRETS_DIR",
    "ENV_CONFIG_PATH",
    "ENV_PREFIX",
    "NEVER_PASSED",
    "SECRET_KEYS",
    "STEP_PLACEHOLDERS",
    "AwsConfig",
    "ChannelFilter",
    "CloudWatchConfig",
    "DaylilyConfig",
    "LeaseConfig",
    "LinearConfig",
    "Loaded",
    "LogConfig",
    "MetricsConfig",
    "NotifyConfig",
    "PipelineConfig",
    "RunConfig",
    "ScanConfig",
    "Seconds",
    "Section",
    "Settings",
    "SnsConfig",
    "StepConfig",
    "TableConfig",
    "WebhookConfig",
    "config_path",
    "load",
    "require_pipeline",
]


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
