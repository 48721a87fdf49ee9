"""The rules for registering a workset by hand and re-opening one, shared by the operator's commands: the same
folders, names and validation the scanner applies, so nothing an operator does runs what a scan would refuse."""

from __future__ import annotations

from collections.abc import Sequence

from monitor import errors, validation
from monitor.model import State, Workset
from monitor.ports import Source
from monitor.states import VALIDATION


def refuse_stand_in(ws: Workset) -> None:
    """A folder whose name is not a valid workset id is registered under a stand-in id, as invalid, and is never
    run (not even with ``--force``): its name would reach the steps' arguments (``{s3_uri}``) and the logs."""
    folder_name = ws.prefix.rstrip("/").rsplit("/", 1)[-1]
    if folder_name != ws.workset_id:
        raise errors.InvalidInput(
            f"{ws.workset_id} stands in for the folder {folder_name[:80]!a}, whose name is not a valid workset "
            "id (1-128 characters from A-Z a-z 0-9 . _ -): rename the folder, and the scanner registers it under "
            "its new name"
        )


async def revalidate(source: Source, ws: Workset, *, max_manifest_bytes: int) -> None:
    """A workset that failed validation is re-opened only once its folder passes validation: otherwise the pipeline
    would run on the input that was refused. ``retry --force`` skips this (and the S3 reads)."""
    workset_id = ws.workset_id
    if ws.state is not State.ERROR or ws.error_category != VALIDATION:
        return
    listing = await source.top_level(ws.prefix)
    verdict = await validation.validate(
        source, folder=ws.prefix, listing=listing, max_manifest_bytes=max_manifest_bytes
    )
    if verdict.kind == "invalid":
        raise errors.InvalidInput(
            f"{workset_id} is still invalid: {verdict.reason} (s3://{ws.bucket}/{ws.prefix}); "
            "fix the folder and retry, or `retry --force` to run it as it is"
        )


def hand_prefix(given: str | None, workset_id: str, prefixes: Sequence[str]) -> str:
    """The folder of a workset registered by hand: one the scanner would look at, a configured ``[scan]`` prefix
    followed by the workset id (which names no other folder: no ``..``, no absolute path, nothing outside the
    prefixes, nothing a terminal or a log line would misread)."""
    folders = [f"{prefix}{workset_id}/" for prefix in prefixes]
    if given is None:
        if len(folders) != 1:
            raise errors.InvalidInput(f"register needs --prefix, one of: {', '.join(folders)}")
        return folders[0]
    folder = given if given.endswith("/") else given + "/"
    if folder not in folders:
        shown = ascii(given[:80]) + ("..." if len(given) > 80 else "")
        raise errors.InvalidInput(
            f"--prefix {shown} is not a folder the scanner looks at for {workset_id}: use "
            f"{' or '.join(folders)} (a [scan] prefix, then the workset id)"
        )
    return folder


def refuse_unless_new(verdict: validation.Verdict, where: str) -> None:
    """A folder registered by hand must be one the scanner would register as a new workset."""
    if verdict.kind == "new":
        return
    if verdict.kind == "legacy":
        why = f"{where} has {verdict.reason}: bring it over with `workset-monitor migrate`"
    elif verdict.kind == "pending":
        why = f"{where}: {verdict.reason} (the scanner registers it once it is written)"
    else:  # invalid, ignored
        why = f"{where} is not a workset to run: {verdict.reason}"
    raise errors.InvalidInput(f"{why}; --no-validate registers it as it is")
