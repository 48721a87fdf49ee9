"""The operator's everyday tools, through the real command line against a moto server on 127.0.0.1: checking a folder
before writing ``daylily.ready``, running one workset by hand, acting on many worksets at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests import test_cli
from tests.lab import Lab
from tests.test_cli import _registered, main

config_file, ready_table, lab = test_cli.config_file, test_cli.ready_table, test_cli.lab  # the CLI tests' fixtures

GOOD_INFO = b"workset_name: test\npriority: urgent\n"


def test_validate_lists_every_problem_of_a_bad_folder_and_writes_nothing(
    ready_table: Path, lab: Lab, aws_endpoint: str, capsys: Any
) -> None:
    """The check an operator runs before writing daylily.ready: every problem at once, each with file, line and
    column (the scanner's validation stopped at the first)."""
    cfg = ("--config", str(ready_table))
    bad_manifest = (
        b"RUN_ID\tSAMPLE_ID\tR1_FQ\tR2_FQ\n"
        b"R1\tS0\tS0_R1.fastq.gz\tS0_R2.fastq.gz\n"  # both exist
        b"R1\tS1\tmissing_R1.fastq.gz\tS0_R2.fastq.gz\n"  # R1 does not exist
        b"R1\tS2\n"  # short row
        b"R1\tS3\t../../etc/passwd\ts3://lab-bucket/nowhere.fq\n"  # leaves sample_data/; does not exist
    )
    lab.workset(
        "ws-bad",
        sentinels=(),
        files={"daylily_work.yaml": None, "daylily_info.yaml": b"priority: high\n", "stage_samples.tsv": bad_manifest},
    )
    before = lab.keys()
    code, out, err = main(capsys, *cfg, "validate", "s3://lab-bucket/worksets/ws-bad/")
    assert code == 1 and err == ""
    assert out.splitlines() == [
        "s3://lab-bucket/worksets/ws-bad/: 6 problems",
        "  daylily_work.yaml: required file is missing",
        "  daylily_info.yaml line 1 column 11: priority 'high' is not one of urgent, normal, low",
        "  stage_samples.tsv line 3 column 3: R1_FQ: s3://lab-bucket/worksets/ws-bad/sample_data/missing_R1.fastq.gz "
        "does not exist",
        "  stage_samples.tsv line 4 column 1: 2 columns, but the header has 4",
        "  stage_samples.tsv line 5 column 3: R1_FQ: '../../etc/passwd' may not leave sample_data/ ('..')",
        "  stage_samples.tsv line 5 column 4: R2_FQ: s3://lab-bucket/nowhere.fq does not exist",
        "note: no daylily.ready yet: fix the problems before writing it",
    ]
    code, out, _ = main(capsys, *cfg, "validate", "--prefix", "worksets/ws-bad", "--json")
    data = json.loads(out)
    assert code == 1 and data["valid"] is False and len(data["problems"]) == 6
    assert data["problems"][2] == {
        "file": "stage_samples.tsv",
        "line": 3,
        "column": 3,
        "message": "R1_FQ: s3://lab-bucket/worksets/ws-bad/sample_data/missing_R1.fastq.gz does not exist",
    }
    assert lab.keys() == before and _registered(aws_endpoint) == []  # nothing written, anywhere


def test_validate_passes_a_good_folder_and_says_what_happens_next(
    ready_table: Path, lab: Lab, aws_endpoint: str, capsys: Any
) -> None:
    cfg = ("--config", str(ready_table))
    lab.workset("ws-good", samples=3, sentinels=(), files={"daylily_info.yaml": GOOD_INFO})
    code, out, _ = main(capsys, *cfg, "validate", "s3://lab-bucket/worksets/ws-good")
    assert code == 0, out
    assert out.splitlines() == [
        "s3://lab-bucket/worksets/ws-good/: valid (3 sample row(s), 6 data object(s), priority urgent)",
        "note: no daylily.ready yet: write it to start the run",
    ]
    lab.workset("ws-ready", prefix="elsewhere/")
    code, out, _ = main(capsys, *cfg, "validate", "--prefix", "elsewhere/ws-ready/", "--json")
    data = json.loads(out)
    assert code == 0 and data["valid"] and data["problems"] == [] and data["samples"] == 2
    assert data["notes"][0].startswith("no [scan] prefix of this configuration holds this folder")
    assert data["notes"][1] == "daylily.ready is present: the scanner registers it"
    lab.workset("ws-old", sentinels=("daylily.ready", "daylily.complete"))
    _, out, _ = main(capsys, *cfg, "validate", "--prefix", "worksets/ws-old/")
    assert "note: daylily.complete from the legacy monitor: `workset-monitor migrate` brings it over" in out
    assert _registered(aws_endpoint) == []


def test_validate_of_nothing_or_a_bad_name_says_so(ready_table: Path, lab: Lab, capsys: Any) -> None:
    cfg = ("--config", str(ready_table))
    code, out, _ = main(capsys, *cfg, "validate", "s3://lab-bucket/worksets/typo/")
    assert code == 1 and "  s3://lab-bucket/worksets/typo/: is empty or does not exist" in out.splitlines()
    lab.workset("bad name!")
    code, out, _ = main(capsys, *cfg, "validate", "s3://lab-bucket/worksets/bad name!/")
    assert code == 1 and "  folder name: invalid workset id 'bad name!'" in out
    code, _, err = main(capsys, *cfg, "validate", "s3://no-such-bucket-here/worksets/x/")
    assert code == 1 and err.strip() == "workset-monitor: bucket no-such-bucket-here does not exist"
