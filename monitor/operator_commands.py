"""The operator's everyday commands beyond a single transition: ``validate`` a folder before writing
``daylily.ready``, and (``cli`` maps exit codes) the commands that act on several worksets at once."""

from __future__ import annotations

from typing import Any

from monitor import errors, legacy, validation
from monitor.app import App
from monitor.aws.s3 import S3Source
from monitor.manifest import Invalid
from monitor.model import check_workset_id


async def cmd_validate(app: App) -> int:
    """Every problem of one workset folder, each with its file, line and column; nothing is written.

    Cost: the folder's top-level listing, one request for ``sample_data/``, two bounded reads and one HEAD per
    distinct data object the manifest names (what the scanner spends on a new folder)."""
    args = app.args
    if args.folder:
        bucket, folder = args.folder
    else:
        bucket = app.settings.scan.bucket
        if not bucket:
            raise errors.InvalidInput("validate --prefix needs [scan] bucket; or give the folder as s3://BUCKET/…/")
        folder = args.prefix.strip("/") + "/"
    where = f"s3://{bucket}/{folder}"
    source = S3Source(app.clients.get("s3"), bucket)
    listing = await source.top_level(folder)
    problems: list[Invalid] = []
    name = folder.rstrip("/").rsplit("/", 1)[-1]
    try:
        check_workset_id(name)
    except ValueError as exc:
        problems.append(Invalid("folder name", f"{exc}: the scanner registers it under a stand-in id, as invalid"))
    if not listing.files and not listing.folders:
        problems.append(Invalid(where, "is empty or does not exist"))
        verdict = validation.Verdict(kind="invalid")
    else:
        verdict = await validation.validate(
            source, folder=folder, listing=listing, max_manifest_bytes=app.settings.scan.max_manifest_bytes
        )
        problems += verdict.problems
    notes = _notes(app, bucket, folder, legacy.classify(listing.files), valid=not problems)
    data: dict[str, Any] = {
        "folder": where,
        "valid": not problems,
        "priority": verdict.priority.value,
        "samples": verdict.samples,
        "data_objects": verdict.references,
        "problems": [{"file": p.file, "line": p.line, "column": p.column, "message": p.message} for p in problems],
        "notes": notes,
    }
    if problems:
        count = f"{len(problems)} problem" + ("s" if len(problems) > 1 else "")
        lines = [f"{where}: {count}", *(f"  {p}" for p in problems)]
    else:
        lines = [
            f"{where}: valid ({verdict.samples} sample row(s), {verdict.references} data object(s), "
            f"priority {verdict.priority.value})"
        ]
    app.emit(data, "\n".join(lines + [f"note: {n}" for n in notes]))
    return errors.EX_FAILED if problems else errors.EX_OK


def _notes(app: App, bucket: str, folder: str, sentinel: str | None, *, valid: bool) -> list[str]:
    """What will happen to the folder: its sentinels, and whether the scanner looks at it at all."""
    scan, notes = app.settings.scan, []
    watched = bucket == scan.bucket and any(
        folder.startswith(p) and "/" not in folder[len(p) :].rstrip("/") for p in scan.prefixes
    )
    if not watched:
        notes.append(
            "no [scan] prefix of this configuration holds this folder: the scanner will not see it "
            "(a workset folder is <bucket>/<prefix><name>/)"
        )
    if sentinel is None:
        notes.append(
            f"no {legacy.READY} yet: write it to start the run"
            if valid
            else f"no {legacy.READY} yet: fix the problems before writing it"
        )
    elif sentinel == legacy.READY:
        notes.append(
            f"{legacy.READY} is present: the scanner registers it"
            + ("" if valid else " as invalid (state error) unless it is fixed first")
        )
    elif sentinel == legacy.IGNORE:
        notes.append(f"{legacy.IGNORE} is present: the monitor leaves this folder alone")
    else:
        notes.append(f"{sentinel} from the legacy monitor: `workset-monitor migrate` brings it over")
    return notes
