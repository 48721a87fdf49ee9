"""A genomics lab's S3 bucket, for tests and benchmarks: worksets in the Daylily layout, good and bad."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

BUCKET = "lab-bucket"
HEADER = ("RUN_ID", "SAMPLE_ID", "SAMPLE_TYPE", "R1_FQ", "R2_FQ", "STAGE_DIRECTIVE")


def manifest(samples: int = 2, *, folder: str = "", crlf: bool = False, refs: str = "relative") -> bytes:
    """A valid stage_samples.tsv whose FASTQ columns point at objects ``workset()`` creates."""
    rows = ["\t".join(HEADER)]
    for i in range(samples):
        r1, r2 = f"S{i}_R1.fastq.gz", f"S{i}_R2.fastq.gz"
        if refs == "s3":
            r1, r2 = f"s3://{BUCKET}/{folder}sample_data/{r1}", f"s3://{BUCKET}/{folder}sample_data/{r2}"
        rows.append("\t".join(("RUN1", f"S{i}", "blood", r1, r2, "stage")))
    newline = "\r\n" if crlf else "\n"
    return (newline.join(rows) + newline).encode()


def workset_files(
    *,
    samples: int = 2,
    extra_data: int = 0,
    sentinels: tuple[str, ...] = ("daylily.ready",),
    priority: str | None = None,
) -> dict[str, bytes]:
    """The objects of one valid workset folder in the Daylily layout, by key under the folder, sentinels last (as a
    lab's upload script writes them)."""
    content = {
        "stage_samples.tsv": manifest(samples),
        "daylily_work.yaml": b"day-clone: -d {workdir_name} -t main\ndy-r: -p produce_snv_concordances\n",
        "daylily_info.yaml": b"workset_name: test\n" + (f"priority: {priority}\n".encode() if priority else b""),
    }
    for i in range(samples):
        content[f"sample_data/S{i}_R1.fastq.gz"] = b"@r1\nACGT\n+\nFFFF\n"
        content[f"sample_data/S{i}_R2.fastq.gz"] = b"@r2\nTGCA\n+\nFFFF\n"
    for i in range(extra_data):
        content[f"sample_data/extra/{i:04d}.bin"] = b"x"
    for sentinel in sentinels:
        content[sentinel] = b"2025-10-17T12:00:00Z"
    return content


@dataclass
class Lab:
    s3: Any
    bucket: str = BUCKET
    puts: collections.Counter[str] = field(default_factory=collections.Counter)

    def put(self, key: str, body: bytes = b"") -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)

    def workset(
        self,
        name: str,
        *,
        prefix: str = "worksets/",
        samples: int = 2,
        extra_data: int = 0,
        sentinels: tuple[str, ...] = ("daylily.ready",),
        priority: str | None = None,
        files: dict[str, bytes | None] | None = None,
    ) -> str:
        """Create a workset folder; ``files`` overrides (bytes) or removes (None) any file of it."""
        folder = f"{prefix}{name}/"
        content: dict[str, bytes | None] = {
            **workset_files(samples=samples, extra_data=extra_data, sentinels=sentinels, priority=priority),
            **(files or {}),
        }
        for relative, body in content.items():
            if body is not None:
                self.put(folder + relative, body)
        return folder

    def keys(self, prefix: str = "") -> set[str]:
        paginator = self.s3.get_paginator("list_objects_v2")
        return {
            o["Key"] for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix) for o in page.get("Contents", [])
        }
