"""The settings tree's sections (DESIGN §9: the keys are a contract). Loading, precedence and error messages are
``monitor.config``'s; every name here is also importable from there."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    # with a queue, the full scan is the backstop for a lost or missing notification: how often it reconciles
    reconcile_interval_s: Seconds = 86_400.0

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
    presence_interval_s: Seconds = 30.0  # how often the daemon writes its presence item (`workset-monitor fleet`)
    # "s3": every step run's complete output also goes to <workset folder>.workset-monitor/logs/ (workset-monitor logs)
    step_logs: Literal["off", "s3"] = "off"
    # this daemon's own files (the known folders, so a restart reads no registered id): systemd's StateDirectory
    # (/var/lib/workset-monitor), a Docker volume. Unset: none kept, a restart reads every registered id once
    state_dir: str | None = None
    # the daemon's environment variables its steps get besides their own WORKSET_* (NAME* for a prefix)
    step_env_passthrough: list[str] = Field(default_factory=lambda: list(DEFAULT_PASSTHROUGH))

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"{value!r} must be an absolute path (e.g. /var/lib/workset-monitor)")
        return value

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
            EventType.PAUSED,
            EventType.RESUMED,
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


def _known_placeholders(args: list[str], known: set[str]) -> None:
    for arg in args:
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(arg) if name is not None}
        except ValueError as exc:
            raise ValueError(f"bad placeholder in {arg!r}: {exc}") from None
        if unknown := sorted(names - known):
            listed = " ".join("{" + n + "}" for n in sorted(known))
            raise ValueError(f"unknown placeholder {{{unknown[0]}}} in {arg!r}; known: {listed}")


class DaylilyConfig(Section):
    """``[daylily]``: what the ``workset-daylily`` steps need to run a workset on a Daylily ParallelCluster head node
    (docs/pipeline.md, "Daylily"). Read by the steps, not by the daemon."""

    # Where the pipeline runs. ``head_node`` fixes the address (a static cluster, a bastion, the tests); otherwise
    # the ``cluster`` step finds it and records it in the workset's run state.
    head_node: str | None = None
    # The cluster (the ``cluster`` step, with AWS ParallelCluster's ``pcluster``): ``cluster_name`` names the one to
    # use (never creates one); else the first ready cluster in ``availability_zone`` (any zone when unset), else a
    # new one made by ``create_command``.
    region: str | None = None  # else [aws] region
    aws_profile: str | None = None  # AWS_PROFILE for pcluster and create_command
    pcluster: str = "pcluster"
    cluster_name: str | None = None
    availability_zone: str | None = None
    create_command: list[str] = Field(
        default_factory=lambda: ["daylily-create-ephemeral-cluster", "--cluster-name", "{cluster}"], min_length=1
    )  # an argv; placeholders {cluster} {region}; run with DAY_CONTACT_EMAIL set from contact_email
    cluster_template: str | None = None  # passed to create_command as --config <template>
    contact_email: str | None = None
    cluster_wait_minutes: float = Field(30.0, gt=0)  # for a cluster being created to become ready
    cluster_poll_s: Seconds = 30.0  # between looks at a cluster being created
    use_private_ip: bool = False  # SSH to the head node's private address (a VPN or a bastion), not its public one
    # The ``teardown`` step: delete the cluster once it has been idle (no tmux session, nothing in squeue) this long,
    # measured on the head node's clock from the first idle look. A ``cluster_name`` cluster is never deleted.
    auto_teardown: bool = False
    idle_teardown_minutes: float = Field(20.0, ge=0)
    queue_command: str = "squeue -h"  # on the head node: one line per queued or running Slurm job
    # The ``export`` step: an argv run on this host (the old export_command), with placeholders {cluster} {region}
    # {head_node} {pipeline_dir} {workset_id} {target_uri} {output_dir}; it must write {output_dir}/fsx_export.yaml
    # with ``fsx_export: {status: success, s3_uri: ...}``. ``export_uri`` is {target_uri} ({workset_id} in it is
    # filled in). None: nothing is exported.
    export_command: list[str] | None = None
    export_uri: str | None = None
    # The ``stage`` step: an argv run on this host (the old stage_command), placeholders {analysis_samples} (a local
    # copy of the workset's stage_samples.tsv) {cluster} {region} {head_node} {reference_bucket} {ssh_user}
    # {ssh_identity_file} {workset_id}; its output names the stage directory ("Remote FSx stage directory: ...")
    # and the files ("Staged files" and an indented list). None: nothing is staged.
    stage_command: list[str] | None = None
    reference_bucket: str | None = None  # {reference_bucket}; else s3://<the workset's bucket>/
    # The ``clone`` step, on the head node: the pipeline's clone (the workset's day-clone arguments in {clone_args})
    # and where it lands when its output has no "Location:" line: <clone_dest_root>/<-d dest>/<repo_dir_name>.
    clone_command: str = "day-clone {clone_args}"
    clone_dest_root: str = "/fsx/analysis_results/ubuntu"
    repo_dir_name: str = "daylily-omics-analysis"

    @field_validator("export_command")
    @classmethod
    def _export_placeholders(cls, value: list[str] | None) -> list[str] | None:
        known = {"cluster", "region", "head_node", "pipeline_dir", "workset_id", "target_uri", "output_dir"}
        _known_placeholders(value or [], known)
        if value is not None and not any("{output_dir}" in arg for arg in value):
            raise ValueError("must pass {output_dir}: the step reads fsx_export.yaml from there")
        return value

    @field_validator("stage_command")
    @classmethod
    def _stage_placeholders(cls, value: list[str] | None) -> list[str] | None:
        known = {"analysis_samples", "cluster", "region", "head_node", "reference_bucket", "ssh_user"}
        _known_placeholders(value or [], known | {"ssh_identity_file", "workset_id"})
        return value

    @field_validator("clone_command")
    @classmethod
    def _clone_placeholders(cls, value: str) -> str:
        _known_placeholders([value], {"clone_args", "workset_id"})
        return value

    ssh_user: str = "ubuntu"
    ssh_port: int = Field(22, ge=1, le=65535)
    ssh_identity_file: str | None = None
    ssh_extra_args: list[str] = Field(default_factory=list)  # e.g. ["-o", "ProxyJump=bastion"]
    ssh_connect_timeout_s: Seconds = 15.0
    # One remote command (the run's checks, a launch) may take this long before it counts as a failed connection.
    ssh_command_timeout_s: Seconds = 120.0
    login_shell_init: str = "source ~/.bashrc"  # run before the pipeline command, in the run's login shell
    # The pipeline directory on the head node: the clone's location when the ``clone`` step recorded one, else
    # ``<workdir>/<workset id>``.
    workdir: str = "/fsx/data/worksets"
    # The run, in the pipeline directory on the head node: a shell command line, the old ``run_prefix`` and its dy-r
    # arguments, e.g. "source dyoainit && source bin/day_activate slurm hg38 && ./bin/day_run produce_snv_concordances"
    run_command: str = Field(min_length=1)
    tmux_session_prefix: str = Field("daylily", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    pipeline_timeout_minutes: float | None = Field(None, gt=0)  # then C-c, then the session is killed: error
    interrupt_grace_s: float = Field(10.0, ge=0)  # between C-c and killing the session
    log_tail_lines: int = Field(40, ge=0, le=1000)  # of the run's log, printed when it failed (the audit trail)

    @field_validator("create_command")
    @classmethod
    def _create_placeholders(cls, value: list[str]) -> list[str]:
        _known_placeholders(value, {"cluster", "region"})
        return value


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
    daylily: DaylilyConfig | None = None  # the workset-daylily steps' section; the daemon ignores it

    def redacted(self) -> dict[str, Any]:
        """The effective settings as plain data, secrets masked."""
        return self.model_dump(mode="json")


def _notifiable(value: list[EventType]) -> list[EventType]:
    bad = [e.value for e in value if e not in NOTIFIABLE_EVENTS]
    if bad:
        allowed = ", ".join(sorted(e.value for e in NOTIFIABLE_EVENTS))
        raise ValueError(f"cannot notify on {', '.join(bad)}; choose from {allowed}")
    return value


# --- turning a ValidationError into one line -------------------------------------------------------------------
