"""Example pipeline steps for ``workset-monitor demo``: small, but they do what real steps do.

    python -m monitor.aws.demo_steps stage|analyse|export

They read the workset from the ``WORKSET_*`` environment the daemon provides, talk to S3 (the demo points
``AWS_ENDPOINT_URL`` at its emulator), and answer with the exit codes of DESIGN §6: 0 done, 75 temporary failure or
"still running", anything else a failure. ``daylily_work.yaml`` may carry ``demo: fail-once`` (the first attempt fails
temporarily) or ``demo: fail-always`` (a permanent failure), to show retries and dead-lettering.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import boto3

EXIT_TEMPORARY = 75


def main(step: str) -> int:
    bucket, prefix = os.environ["WORKSET_BUCKET"], os.environ["WORKSET_PREFIX"]
    attempt, epoch = int(os.environ["WORKSET_ATTEMPT"]), int(os.environ["WORKSET_EPOCH"])
    s3 = boto3.client("s3")

    def read(name: str) -> str:
        return str(s3.get_object(Bucket=bucket, Key=prefix + name)["Body"].read().decode())

    def write(name: str, body: str) -> None:
        s3.put_object(Bucket=bucket, Key=f"{prefix}results/{name}", Body=body.encode())

    if step == "stage":
        behaviour = next(
            (
                line.split(":", 1)[1].strip()
                for line in read("daylily_work.yaml").splitlines()
                if line.startswith("demo:")
            ),
            "",
        )
        if behaviour == "fail-always":
            print("stage: reference genome hg99 is not available on this cluster", file=sys.stderr)
            return 2
        if behaviour == "fail-once" and attempt == 1:
            print("stage: the cluster's scratch volume is full; try again later", file=sys.stderr)
            return EXIT_TEMPORARY
        rows = [line.split("\t") for line in read("stage_samples.tsv").splitlines()]
        header, samples = rows[0], rows[1:]
        staged: dict[str, Any] = {"samples": [dict(zip(header, row, strict=False)).get("SAMPLE_ID") for row in samples]}
        write("stage.json", json.dumps(staged))
        print(f"stage: staged {len(samples)} sample(s) from s3://{bucket}/{prefix}stage_samples.tsv")
        return 0

    if step == "analyse":  # a poll step: the first run "submits", later runs check on the (pretend) job
        marker = f"{prefix}results/analysis-epoch{epoch}.submitted"
        try:
            s3.head_object(Bucket=bucket, Key=marker)
        except s3.exceptions.ClientError:
            s3.put_object(Bucket=bucket, Key=marker, Body=b"")
            print(f"analyse: job submitted (epoch {epoch})")
            return EXIT_TEMPORARY
        print("analyse: job finished")
        return 0

    if step == "export":
        staged = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}results/stage.json")["Body"].read())
        summary = "SAMPLE_ID\tSTATUS\n" + "".join(f"{s}\tPASS\n" for s in staged["samples"])
        write("summary.tsv", summary)
        print(f"export: wrote s3://{bucket}/{prefix}results/summary.tsv")
        return 0

    print(f"unknown step {step!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
