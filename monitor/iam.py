"""The least-privilege IAM policy for a configuration, rendered from what the code actually calls.

``OPERATIONS`` maps every AWS operation the program makes to the IAM actions it needs; ``make test`` records every
AWS call the test suite makes and fails if one is missing here, or if the rendered policy grants an action no call
needs (see ``tests/conftest.py``). Two roles:

- ``daemon``: what ``run`` and the operator commands need (read and write worksets, scan S3, notify, metrics,
  ``check``);
- ``admin``: additionally ``init`` (create or upgrade the table) and ``export``/``import`` (scan, put).

Not covered: objects in *other* buckets that manifests reference with ``s3://`` URIs (validation HEADs them): add
``s3:GetObject`` on those buckets yourself (``--read-bucket``); nor worksets registered by hand outside ``[scan]``'s
bucket and prefixes (their step logs, sentinels and files).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from monitor.aws.codec import FINISHED_GSI, GSI_NAME, OUTBOX_GSI
from monitor.config import Settings
from monitor.daylily.state import STATE_DIR

Role = Literal["daemon", "admin"]

# (service, operation) -> (IAM actions, the role that needs it); STS GetCallerIdentity needs no permission.
OPERATIONS: dict[tuple[str, str], tuple[frozenset[str], Role]] = {
    ("dynamodb", "GetItem"): (frozenset({"dynamodb:GetItem"}), "daemon"),
    ("dynamodb", "BatchGetItem"): (frozenset({"dynamodb:BatchGetItem"}), "daemon"),
    ("dynamodb", "Query"): (frozenset({"dynamodb:Query"}), "daemon"),
    ("dynamodb", "UpdateItem"): (frozenset({"dynamodb:UpdateItem"}), "daemon"),
    # our transactions hold Put and Update items only (no ConditionCheck, no Delete)
    ("dynamodb", "TransactWriteItems"): (frozenset({"dynamodb:PutItem", "dynamodb:UpdateItem"}), "daemon"),
    ("dynamodb", "DescribeTable"): (frozenset({"dynamodb:DescribeTable"}), "daemon"),
    ("dynamodb", "CreateTable"): (frozenset({"dynamodb:CreateTable"}), "admin"),
    ("dynamodb", "UpdateTable"): (frozenset({"dynamodb:UpdateTable"}), "admin"),
    ("dynamodb", "Scan"): (frozenset({"dynamodb:Scan"}), "admin"),
    ("dynamodb", "PutItem"): (frozenset({"dynamodb:PutItem"}), "daemon"),  # import; a daemon's presence item
    ("dynamodb", "DeleteItem"): (frozenset({"dynamodb:DeleteItem"}), "daemon"),  # a presence item
    ("s3", "ListObjectsV2"): (frozenset({"s3:ListBucket"}), "daemon"),
    ("s3", "GetObject"): (frozenset({"s3:GetObject"}), "daemon"),
    ("s3", "HeadObject"): (frozenset({"s3:GetObject"}), "daemon"),
    ("s3", "PutObject"): (frozenset({"s3:PutObject"}), "daemon"),
    ("s3", "DeleteObject"): (frozenset({"s3:DeleteObject"}), "daemon"),
    ("sns", "Publish"): (frozenset({"sns:Publish"}), "daemon"),
    ("sns", "GetTopicAttributes"): (frozenset({"sns:GetTopicAttributes"}), "daemon"),
    ("sqs", "ReceiveMessage"): (frozenset({"sqs:ReceiveMessage"}), "daemon"),
    ("sqs", "DeleteMessage"): (frozenset({"sqs:DeleteMessage"}), "daemon"),
    ("sqs", "GetQueueAttributes"): (frozenset({"sqs:GetQueueAttributes"}), "daemon"),
    ("cloudwatch", "PutMetricData"): (frozenset({"cloudwatch:PutMetricData"}), "daemon"),
    ("sts", "GetCallerIdentity"): (frozenset(), "daemon"),
    # the Daylily `cluster` step, with [daylily] availability_zone: where a head node's instance runs
    ("ec2", "DescribeInstances"): (frozenset({"ec2:DescribeInstances"}), "daemon"),
}


def render(
    settings: Settings,
    *,
    role: Role = "daemon",
    account: str | None = None,
    region: str | None = None,
    read_buckets: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The IAM policy document (a dict, ready for ``json.dumps``) for ``settings``."""
    region = region or settings.aws.region or _region_of(settings) or "*"
    account = account or _account_of(settings) or "*"
    table = f"arn:aws:dynamodb:{region}:{account}:table/{settings.table.name}"
    statements: list[dict[str, Any]] = []

    def allow(sid: str, actions: set[str], resources: list[str], condition: dict[str, Any] | None = None) -> None:
        statement: dict[str, Any] = {"Sid": sid, "Effect": "Allow", "Action": sorted(actions), "Resource": resources}
        if condition:
            statement["Condition"] = condition
        statements.append(statement)

    dynamodb = {"GetItem", "BatchGetItem", "Query", "UpdateItem", "PutItem", "DeleteItem", "DescribeTable"}
    if role == "admin":
        dynamodb |= {"CreateTable", "UpdateTable", "Scan"}
    allow(
        "WorksetTable",
        {f"dynamodb:{a}" for a in dynamodb},
        [table, *(f"{table}/index/{index}" for index in (GSI_NAME, OUTBOX_GSI, FINISHED_GSI))],
    )

    bucket = settings.scan.bucket
    if bucket:
        prefixes = list(settings.scan.prefixes)
        condition = None if "" in prefixes else {"StringLike": {"s3:prefix": [f"{p}*" for p in prefixes]}}
        allow("ListWorksetFolders", {"s3:ListBucket"}, [f"arn:aws:s3:::{bucket}"], condition)
        objects = [f"arn:aws:s3:::{bucket}/{p}*" for p in prefixes]
        allow("ReadWorksets", {"s3:GetObject"}, objects + [f"arn:aws:s3:::{b}/*" for b in read_buckets])
        if settings.scan.write_sentinels:
            sentinels = [f"arn:aws:s3:::{bucket}/{p}*/daylily.*" for p in prefixes]
            allow("WriteLegacySentinels", {"s3:PutObject", "s3:DeleteObject"}, sentinels)
        if settings.run.step_logs == "s3":  # reading them back (``logs``) is ListWorksetFolders and ReadWorksets
            step_logs = [f"arn:aws:s3:::{bucket}/{p}*/.workset-monitor/logs/*" for p in prefixes]
            allow("WriteStepLogs", {"s3:PutObject"}, step_logs)
        if settings.daylily is not None:  # the workset-daylily steps run as the daemon; they read with ReadWorksets
            run_states = [f"arn:aws:s3:::{bucket}/{p}*/{STATE_DIR}*" for p in prefixes]
            allow("DaylilyRunState", {"s3:PutObject"}, run_states)
    if settings.daylily is not None and settings.daylily.availability_zone:
        # ec2:DescribeInstances has no resource-level permissions: "*" is the only resource it takes
        allow("DaylilyHeadNodeZone", {"ec2:DescribeInstances"}, ["*"])
    if settings.notify.sns is not None:
        allow("PublishNotifications", {"sns:Publish", "sns:GetTopicAttributes"}, [settings.notify.sns.topic_arn])
    if settings.scan.sqs_queue_url:
        allow(
            "ReadyNotificationsQueue",
            {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"},
            [_queue_arn(settings.scan.sqs_queue_url, region, account)],
        )
    if settings.metrics.cloudwatch is not None:
        allow(
            "PublishMetrics",
            {"cloudwatch:PutMetricData"},
            ["*"],
            {"StringEquals": {"cloudwatch:namespace": settings.metrics.cloudwatch.namespace}},
        )
    return {"Version": "2012-10-17", "Statement": statements}


def actions(policy: dict[str, Any]) -> set[str]:
    return {action for statement in policy["Statement"] for action in statement["Action"]}


def _region_of(settings: Settings) -> str | None:
    arn = settings.notify.sns.topic_arn if settings.notify.sns else None
    if arn:
        return arn.split(":")[3]
    match = re.match(r"https://sqs\.([a-z0-9-]+)\.", settings.scan.sqs_queue_url or "")
    return match.group(1) if match else None


def _account_of(settings: Settings) -> str | None:
    if settings.notify.sns is not None:
        return settings.notify.sns.topic_arn.split(":")[4]
    match = re.search(r"/(\d{12})/", settings.scan.sqs_queue_url or "")
    return match.group(1) if match else None


def _queue_arn(url: str, region: str, account: str) -> str:
    parts = url.rstrip("/").split("/")
    found_account = parts[-2] if len(parts) >= 2 and re.fullmatch(r"\d{12}", parts[-2]) else account
    return f"arn:aws:sqs:{region}:{found_account}:{parts[-1]}"
