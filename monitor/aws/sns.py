"""SNS: one ``Publish`` per event, with message attributes subscribers can filter on.

Subject at most 100 characters and one line; ``workset_id``, ``event_type``, ``state`` and ``priority`` as String
attributes; the body bounded to SNS's 256 KiB. Throttling and 5xx are temporary; a missing topic, a bad parameter or
a denied publish are permanent.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

import botocore.exceptions

from monitor import errors
from monitor.aws import clients
from monitor.model import Event, Workset
from monitor.notify import message


class SnsChannel:
    name = "sns"

    def __init__(self, client: Any, topic_arn: str, *, executor: Executor | None = None) -> None:
        self._client = client
        self._topic_arn = topic_arn
        self._executor = executor  # the channel's worker threads (a pool of its own in the daemon)

    async def send(self, event: Event, ws: Workset | None) -> str:
        attributes = {
            "workset_id": event.workset_id,
            "event_type": event.type.value,
            "priority": event.priority.value,
        }
        if event.to_state is not None:  # a fleet-wide event (pause, resume) has none
            attributes["state"] = event.to_state.value
        try:
            await clients.call(
                self._client.publish,
                executor=self._executor,
                TopicArn=self._topic_arn,
                Subject=message.subject(event),
                Message=message.body(event, ws),
                MessageAttributes={k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()},
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            ours = clients.translate(exc, what=f"publishing to {self._topic_arn}")
            raise errors.DeliveryError(str(ours), temporary=ours.temporary) from exc
        return "sent"
