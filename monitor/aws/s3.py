"""Worksets in S3 (implements ``ports.Source``): delimited listings, bounded reads, HEADs, sentinel writes; and full
step logs (``S3Logs``, implements ``ports.LogStore``).

Costs are what the scanner's budget is built on: ``folders`` is one ``ListObjectsV2`` per 1000 child folders;
``top_level`` one per 1000 entries of a workset's own top level (never its ``sample_data/`` contents); ``has_objects``
one call; ``read`` one ranged GET that never transfers more than ``max_bytes + 1`` bytes.
"""

from __future__ import annotations

from typing import Any

import botocore.exceptions

from monitor import errors
from monitor.aws import clients
from monitor.ports import Listing, TooLarge


class S3Source:
    def __init__(self, client: Any, bucket: str) -> None:
        self._client = client
        self.bucket = bucket

    async def folders(self, prefix: str) -> list[str]:
        """Names of the child folders of ``prefix``, every page."""
        names: list[str] = []
        async for page in self._list(prefix=prefix, delimiter=True):
            names += [cp["Prefix"][len(prefix) :].removesuffix("/") for cp in page.get("CommonPrefixes", [])]
        return names

    async def top_level(self, folder: str) -> Listing:
        """The files and sub-folders directly in ``folder`` (which ends in '/')."""
        files: dict[str, int] = {}
        subfolders: set[str] = set()
        async for page in self._list(prefix=folder, delimiter=True):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(folder) :]
                if name:
                    files[name] = int(obj.get("Size", 0))
            subfolders |= {cp["Prefix"][len(folder) :].removesuffix("/") for cp in page.get("CommonPrefixes", [])}
        return Listing(files=files, folders=frozenset(subfolders))

    async def has_objects(self, prefix: str) -> bool:
        """Whether anything but a zero-byte "folder marker" (the key ``prefix`` itself) lies under ``prefix``."""
        response = await self._call(
            "list_objects_v2", what=f"listing {prefix}", Bucket=self.bucket, Prefix=prefix, MaxKeys=2
        )
        return any(obj["Key"] != prefix for obj in response.get("Contents", []))

    async def size(self, bucket: str, key: str) -> int | None:
        try:
            response = await self._call(
                "head_object",
                what=f"checking s3://{bucket}/{key}",
                Bucket=bucket,
                Key=key,
                inspect=("404", "NoSuchKey", "NotFound", "NoSuchBucket"),
            )
        except botocore.exceptions.ClientError:
            return None
        return int(response.get("ContentLength", 0))

    async def read(self, key: str, *, max_bytes: int) -> bytes:
        """The object's bytes; TooLarge when it holds more than ``max_bytes`` (only max_bytes + 1 are transferred)."""
        try:
            response = await self._call(
                "get_object",
                what=f"reading s3://{self.bucket}/{key}",
                inspect=("InvalidRange",),
                Bucket=self.bucket,
                Key=key,
                Range=f"bytes=0-{max_bytes}",
            )
        except botocore.exceptions.ClientError:
            return b""  # S3 answers a range request on an empty object with 416 InvalidRange
        body = await clients.call(response["Body"].read)
        if len(body) > max_bytes:
            raise TooLarge(key, max_bytes)
        return bytes(body)

    async def write(self, key: str, body: bytes) -> None:
        await self._call("put_object", what=f"writing s3://{self.bucket}/{key}", Bucket=self.bucket, Key=key, Body=body)

    async def delete(self, key: str) -> None:
        await self._call("delete_object", what=f"deleting s3://{self.bucket}/{key}", Bucket=self.bucket, Key=key)

    def _list(self, *, prefix: str, delimiter: bool) -> Any:
        return _pages(self._client, self.bucket, prefix, delimiter=delimiter)

    async def _call(self, operation: str, *, what: str, inspect: tuple[str, ...] = (), **kwargs: Any) -> Any:
        return await _call(self._client, operation, what=what, inspect=inspect, **kwargs)


class S3Logs:
    """Full step logs (implements ``ports.LogStore``): one PutObject per segment write, one ListObjectsV2 per 1000
    objects, one (ranged) GET per read."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def put(self, bucket: str, key: str, body: bytes) -> None:
        await _call(self._client, "put_object", what=f"writing s3://{bucket}/{key}", Bucket=bucket, Key=key, Body=body)

    async def sizes(self, bucket: str, prefix: str) -> dict[str, int]:
        found: dict[str, int] = {}
        async for page in _pages(self._client, bucket, prefix, delimiter=False):
            found |= {obj["Key"]: int(obj.get("Size", 0)) for obj in page.get("Contents", [])}
        return found

    async def read(self, bucket: str, key: str, *, start: int = 0) -> bytes:
        what = f"reading s3://{bucket}/{key}"
        try:
            response = await _call(
                self._client,
                "get_object",
                what=what,
                inspect=("InvalidRange",),
                Bucket=bucket,
                Key=key,
                Range=f"bytes={start}-",
            )
        except botocore.exceptions.ClientError:
            return b""  # nothing from ``start`` on (416 InvalidRange)
        return bytes(await clients.call(response["Body"].read))


async def _pages(client: Any, bucket: str, prefix: str, *, delimiter: bool) -> Any:
    """Every page of a ListObjectsV2 of ``prefix`` (``delimiter``: one level, sub-folders as CommonPrefixes)."""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    if delimiter:
        kwargs["Delimiter"] = "/"
    while True:
        page = await _call(client, "list_objects_v2", what=f"listing s3://{bucket}/{prefix}", **kwargs)
        yield page
        if not page.get("IsTruncated"):
            return
        kwargs["ContinuationToken"] = page["NextContinuationToken"]


async def _call(client: Any, operation: str, *, what: str, inspect: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """One S3 call; an AWS error becomes the program's own (``inspect``: these codes are raised as they are)."""
    try:
        return await clients.call(getattr(client, operation), **kwargs)
    except botocore.exceptions.ClientError as exc:
        if clients.error_code(exc) in inspect:
            raise
        if clients.error_code(exc) == "NoSuchBucket":
            raise errors.NotFound(f"bucket {kwargs.get('Bucket')} does not exist") from exc
        raise clients.translate(exc, what=what) from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise clients.translate(exc, what=what) from exc
