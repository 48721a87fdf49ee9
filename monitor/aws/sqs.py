"""S3 event notifications through SQS (implements ``ports.Queue``): long-poll receive, delete after handling."""

from __future__ import annotations

from typing import Any

import botocore.exceptions

from monitor.aws import clients
from monitor.ports import Message


class SqsQueue:
    def __init__(self, client: Any, url: str) -> None:
        self._client = client
        self.url = url

    async def receive(self, *, wait_s: int, max_messages: int = 10) -> list[Message]:
        response = await self._call(
            "receive_message", QueueUrl=self.url, MaxNumberOfMessages=max_messages, WaitTimeSeconds=wait_s
        )
        return [Message(body=m["Body"], receipt=m["ReceiptHandle"]) for m in response.get("Messages", [])]

    async def delete(self, message: Message) -> None:
        await self._call("delete_message", QueueUrl=self.url, ReceiptHandle=message.receipt)

    async def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return await clients.call(getattr(self._client, operation), **kwargs)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise clients.translate(exc, what=f"SQS {operation} on {self.url}") from exc
