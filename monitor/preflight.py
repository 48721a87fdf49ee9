"""``workset-monitor check``: before starting the service, try every dependency with a real, read-only call.

Each check prints PASS, FAIL (with what to do about it) or SKIP (not configured, or not checkable without writing).
Nothing is written anywhere: listing, describing and a GraphQL ``viewer`` query only; the metrics port is bound and
released at once.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor import errors, steps
from monitor.aws import clients as aws_clients
from monitor.aws import schema
from monitor.config import Settings
from monitor.notify import http

UNREACHABLE = (
    "AWS is unreachable from here: check [aws] endpoint_url and region, the network (a proxy, VPC endpoints) and "
    "that credentials are there"
)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # PASS, FAIL, SKIP
    detail: str
    unreachable: bool = False  # failed because AWS could not be reached at all (exit code 69)


def run(
    settings: Settings, clients: aws_clients.Clients, *, config_path: str, environ: Mapping[str, str] | None = None
) -> list[Check]:
    results = [Check("config", "PASS", f"{config_path} is valid")]
    results += _steps(settings, os.environ if environ is None else environ)
    results.append(
        _try(
            "credentials",
            lambda: _identity(clients),
            "configure AWS credentials: an instance or task role, AWS_PROFILE, or [aws] profile",
        )
    )
    results.append(
        _try(
            "table",
            lambda: _table(clients, settings),
            "run `workset-monitor init` (admin policy), or fix [table] name / [aws] region",
        )
    )
    if settings.scan.bucket:
        for prefix in settings.scan.prefixes:
            results.append(
                _try(
                    f"bucket s3://{settings.scan.bucket}/{prefix}",
                    functools.partial(_listing, clients, settings.scan.bucket, prefix),
                    "grant s3:ListBucket and s3:GetObject there "
                    "(`workset-monitor iam-policy`), or fix [scan] bucket/prefixes",
                )
            )
        if settings.scan.write_sentinels:
            results.append(Check("sentinel writes", "SKIP", "s3:PutObject/DeleteObject are not tried (no writes)"))
    else:
        results.append(Check("bucket", "FAIL", "[scan] bucket is not set: `run` needs it"))
    if settings.notify.sns is not None:
        arn = settings.notify.sns.topic_arn
        results.append(
            _try(
                f"sns {arn.rsplit(':', 1)[-1]}",
                lambda: _topic(clients, arn),
                "create the topic or fix [notify.sns] topic_arn; grant sns:Publish and sns:GetTopicAttributes",
            )
        )
    if settings.scan.sqs_queue_url:
        url = settings.scan.sqs_queue_url
        results.append(
            _try(
                "sqs queue",
                lambda: _queue(clients, url),
                "fix [scan] sqs_queue_url; grant sqs:ReceiveMessage, DeleteMessage, GetQueueAttributes",
            )
        )
    if settings.notify.linear is not None:
        results.append(_try("linear", lambda: _linear(settings), "check [notify.linear] api_key (secret) and api_url"))
    if settings.notify.webhook is not None:
        results.append(Check("webhook", "SKIP", "not sent by check: `workset-monitor notify-test` sends a test"))
    if (state_dir := settings.run.state_dir) is not None:
        results.append(
            _try(
                f"state dir {state_dir}",
                lambda: _state_dir(state_dir),
                "create it, writable by the daemon's user, or remove [run] state_dir",
            )
        )
    metrics = settings.metrics
    results.append(
        _try(
            f"metrics port {metrics.host}:{metrics.port}",
            lambda: _bind(metrics.host, metrics.port),
            "free the port or change [metrics] port (another daemon on this host?)",
        )
    )
    return results


def _steps(settings: Settings, environ: Mapping[str, str]) -> list[Check]:
    """Each step's program is there and executable, found as the daemon will look for it: on the PATH its steps
    get (``[run] step_env_passthrough``; without PATH there, the system default), from this environment."""
    path = steps.passed_on(environ, settings.run.step_env_passthrough).get("PATH", os.defpath)
    fix = "install it, or fix the step's command in [[pipeline.steps]]"
    found = []
    for step in settings.pipeline.steps:
        name, program = f"step {step.name}", step.command[0]
        if "{" in program:
            found.append(Check(name, "SKIP", f"its program depends on the workset: {program}"))
        elif "/" in program:
            if not os.path.exists(program):
                found.append(Check(name, "FAIL", f"{program} does not exist -> {fix}"))
            elif os.path.isdir(program) or not os.access(program, os.X_OK):
                found.append(Check(name, "FAIL", f"{program} is not an executable file -> {fix}"))
            else:
                found.append(Check(name, "PASS", program))
        elif (where := shutil.which(program, path=path)) is not None:
            found.append(Check(name, "PASS", where))
        else:
            found.append(Check(name, "FAIL", f"{program} is not on PATH ({path}) -> {fix}"))
    return found


def _try(name: str, probe: Callable[[], str], fix: str) -> Check:
    try:
        return Check(name, "PASS", probe())
    except errors.AwsUnavailable as exc:  # not a missing table or a denied call: nothing answered at all
        return Check(name, "FAIL", f"{exc} -> {UNREACHABLE}", unreachable=True)
    except errors.MonitorError as exc:
        return Check(name, "FAIL", f"{exc} -> {fix}")
    except Exception as exc:  # an AWS library error not translated, a socket error...
        return Check(name, "FAIL", f"{type(exc).__name__}: {exc} -> {fix}")


def _call(fn: Callable[..., Any], what: str, **kwargs: Any) -> Any:
    try:
        return fn(**kwargs)
    except errors.MonitorError:
        raise
    except Exception as exc:
        raise aws_clients.translate(exc, what=what) from exc


def _identity(clients: aws_clients.Clients) -> str:
    who = _call(clients.get("sts").get_caller_identity, "asking who we are")
    return f"account {who['Account']} as {who['Arn']}"


def _table(clients: aws_clients.Clients, settings: Settings) -> str:
    name = settings.table.name
    description = _call(clients.get("dynamodb").describe_table, f"describing table {name}", TableName=name)["Table"]
    problems = schema.verify(description, outbox=True, finished=True)
    if problems:
        raise errors.SchemaMismatch("; ".join(problems))
    return f"{name} is {description.get('TableStatus')} with its indexes"


def _listing(clients: aws_clients.Clients, bucket: str, prefix: str) -> str:
    page = _call(
        clients.get("s3").list_objects_v2,
        f"listing s3://{bucket}/{prefix}",
        Bucket=bucket,
        Prefix=prefix,
        Delimiter="/",
        MaxKeys=1000,
    )
    folders = len(page.get("CommonPrefixes", []))
    return f"listed: {folders}{'+' if page.get('IsTruncated') else ''} folder(s)"


def _topic(clients: aws_clients.Clients, arn: str) -> str:
    attributes = _call(clients.get("sns").get_topic_attributes, f"reading topic {arn}", TopicArn=arn)["Attributes"]
    return f"topic exists ({attributes.get('SubscriptionsConfirmed', '?')} confirmed subscription(s))"


def _queue(clients: aws_clients.Clients, url: str) -> str:
    attributes = _call(
        clients.get("sqs").get_queue_attributes,
        f"reading queue {url}",
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages"],
    )["Attributes"]
    return f"queue exists ({attributes.get('ApproximateNumberOfMessages', '?')} message(s) waiting)"


def _linear(settings: Settings) -> str:
    import asyncio  # noqa: PLC0415 - only this check needs an event loop

    cfg = settings.notify.linear
    assert cfg is not None
    key = cfg.api_key.get_secret_value()
    headers = {
        "Content-Type": "application/json",
        "Authorization": key if key.startswith(("lin_api_", "Bearer ")) else f"Bearer {key}",
    }
    payload = json.dumps({"query": "{ viewer { id name } }"}).encode()
    response = asyncio.run(http.post(cfg.api_url, payload, headers=headers, timeout_s=cfg.timeout_s))
    data = response.json()
    if not isinstance(data, dict) or data.get("errors") or not (data.get("data") or {}).get("viewer"):
        message = (data.get("errors") or [{}])[0].get("message", "no viewer") if isinstance(data, dict) else data
        raise errors.DeliveryError(f"Linear refused: {message}", temporary=False)
    return f"API key works (as {data['data']['viewer'].get('name', '?')})"


def _state_dir(path: str) -> str:
    """Where the daemon keeps the known folders: a writable directory, or one it can create."""
    directory = Path(path)
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    if not existing.is_dir():
        raise errors.ConfigError(f"{existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise errors.ConfigError(f"{existing} is not writable by this user")
    return "writable" if existing == directory else f"will be created in {existing}"


def _bind(host: str, port: int) -> str:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise errors.MonitorError(f"cannot bind: {exc.strerror or exc}") from None
    return "free"
