"""A workset's Daylily run state in its S3 folder (implements ``daylily.state.RunStates``): one small JSON object,
written with S3's conditional writes (``If-None-Match: *`` for the first, ``If-Match: <ETag>`` after), so a write
based on an old read is refused instead of overwriting a newer one. One GET per read, one PUT per write."""

from __future__ import annotations

from typing import Any

import botocore.exceptions

from monitor.aws import clients
from monitor.daylily.state import STATE_KEY, Changed, RunState

_CHANGED = ("PreconditionFailed", "ConditionalRequestConflict")


class S3RunStates:
    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self._client = client
        self._bucket = bucket
        self._key = prefix + STATE_KEY
        self.where = f"s3://{bucket}/{self._key}"

    def read(self) -> tuple[RunState | None, Any]:
        try:
            response = self._client.get_object(Bucket=self._bucket, Key=self._key)
            text = response["Body"].read().decode("utf-8", errors="replace")
        except botocore.exceptions.ClientError as exc:
            if clients.error_code(exc) in ("NoSuchKey", "404"):
                return None, None
            raise clients.translate(exc, what=f"reading {self.where}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise clients.translate(exc, what=f"reading {self.where}") from exc
        return RunState.from_json(text, where=self.where), response["ETag"]

    def write(self, state: RunState, *, expect: Any) -> None:
        condition = {"IfNoneMatch": "*"} if expect is None else {"IfMatch": expect}
        try:
            self._client.put_object(
                Bucket=self._bucket,
                Key=self._key,
                Body=state.to_json().encode(),
                ContentType="application/json",
                **condition,
            )
        except botocore.exceptions.ClientError as exc:
            if clients.error_code(exc) in _CHANGED:
                raise Changed(f"{self.where} changed since it was read") from exc
            raise clients.translate(exc, what=f"writing {self.where}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise clients.translate(exc, what=f"writing {self.where}") from exc


def read_workset_file(client: Any, bucket: str, key: str) -> bytes | None:
    """One small file of the workset's folder (``daylily_work.yaml``); None when there is none."""
    try:
        response = client.get_object(Bucket=bucket, Key=key)
        return bytes(response["Body"].read(1 << 20))  # the pipeline's own settings: small; more is not read
    except botocore.exceptions.ClientError as exc:
        if clients.error_code(exc) in ("NoSuchKey", "404"):
            return None
        raise clients.translate(exc, what=f"reading s3://{bucket}/{key}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise clients.translate(exc, what=f"reading s3://{bucket}/{key}") from exc
