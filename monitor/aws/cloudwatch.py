"""Optional CloudWatch metrics (``[metrics.cloudwatch] namespace``) for sites without Prometheus.

Every ``interval_s`` it publishes, in batches of at most 20 datums per ``PutMetricData``: the queue depth per state
(``Worksets``, dimension ``State``) from the last queue refresh (no extra table read), and what happened since the last
publish — ``ErrorTransitions``, ``LeasesLost``, ``StaleLeasesReclaimed``, ``NotificationFailures`` — as counts.
Remember that the daemon's IAM role needs ``cloudwatch:PutMetricData`` for exactly this namespace (the system we
replace denied its own namespace, so nothing ever arrived).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import botocore.exceptions

from monitor.aws import clients
from monitor.model import State, Stats

BATCH = 20


class CloudWatchPublisher:
    def __init__(self, client: Any, namespace: str, *, errors_to: Mapping[str, float] | None = None) -> None:
        self._client = client
        self.namespace = namespace
        self._last: dict[str, float] = dict(errors_to or {})
        self.published = 0

    async def publish(self, stats: Stats | None, counters: Mapping[str, Mapping[tuple[str, ...], float]]) -> None:
        data: list[dict[str, Any]] = []
        if stats is not None:
            data += [
                {
                    "MetricName": "Worksets",
                    "Dimensions": [{"Name": "State", "Value": s.value}],
                    "Value": float(stats.count(s)),
                    "Unit": "Count",
                }
                for s in State
            ]
        totals = {
            "LeasesLost": sum(counters.get("leases_lost", {}).values()),
            "StaleLeasesReclaimed": sum(counters.get("stale_leases_reclaimed", {}).values()),
            "NotificationFailures": sum(v for k, v in counters.get("notifications", {}).items() if k[1] == "failed"),
            "ErrorTransitions": sum(counters.get("error_transitions", {}).values()),
        }
        for name, total in totals.items():
            data.append({"MetricName": name, "Value": max(total - self._last.get(name, 0.0), 0.0), "Unit": "Count"})
            self._last[name] = total
        for start in range(0, len(data), BATCH):
            try:
                await clients.call(
                    self._client.put_metric_data, Namespace=self.namespace, MetricData=data[start : start + BATCH]
                )
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
                raise clients.translate(
                    exc, what=f"publishing metrics to CloudWatch namespace {self.namespace}"
                ) from exc
            self.published += len(data[start : start + BATCH])
