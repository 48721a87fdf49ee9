"""Looking at one workset folder in S3: is it new, waiting, legacy, ignored, or invalid, and why.

Cost of a new folder: one listing of its own top level, one request to see that ``sample_data/`` is not empty, two
bounded reads (``daylily_info.yaml``, ``stage_samples.tsv``) and one HEAD per distinct data reference in the manifest
(eight at a time; their sizes add up to the workset's data bytes). Nothing under ``sample_data/`` is ever listed in
full.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

from monitor import legacy
from monitor.manifest import (
    INFO_FILE,
    MANIFEST,
    REQUIRED_FILES,
    SAMPLE_DATA,
    Invalid,
    Reference,
    check_manifest,
    check_not_before,
    check_priority,
    resolve,
)
from monitor.model import Priority
from monitor.ports import Listing, Source, TooLarge

INFO_MAX_BYTES = 1 << 20
HEAD_CONCURRENCY = 8

Kind = Literal["new", "invalid", "ignored", "pending", "legacy"]


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: Kind
    priority: Priority = Priority.NORMAL
    reason: str = ""
    sentinel: str | None = None  # the legacy sentinel that decided (precedence applied)
    problems: tuple[Invalid, ...] = ()  # every problem of an invalid workset, in file order
    not_before_ms: int | None = None  # daylily_info.yaml's not_before: not run before then
    samples: int = 0  # rows of the manifest
    references: int = 0  # distinct data objects the manifest names
    data_bytes: int = 0  # their total size (of those that exist)


async def inspect(source: Source, *, folder: str, max_manifest_bytes: int) -> Verdict:
    """What ``folder`` (``<prefix><name>/``) is, validating it fully when it is a new workset."""
    listing = await source.top_level(folder)
    sentinel = legacy.classify(listing.files)
    if sentinel == legacy.IGNORE:
        return Verdict(kind="ignored", reason=f"{legacy.IGNORE} is present", sentinel=sentinel)
    if sentinel is None:
        return Verdict(kind="pending", reason=f"no {legacy.READY} yet")
    if sentinel != legacy.READY:
        return Verdict(kind="legacy", reason=f"{sentinel} from the legacy monitor", sentinel=sentinel)
    return await validate(source, folder=folder, listing=listing, max_manifest_bytes=max_manifest_bytes)


async def validate(source: Source, *, folder: str, listing: Listing, max_manifest_bytes: int) -> Verdict:
    """Every problem of the folder's content (its sentinels aside): missing files, an empty ``sample_data/``, the
    priority, the manifest's structure, unsafe and missing data references. The reason names the first."""
    problems: list[Invalid] = [
        Invalid(name, "required file is missing") for name in REQUIRED_FILES if name not in listing.files
    ]
    if SAMPLE_DATA not in listing.folders or not await source.has_objects(f"{folder}{SAMPLE_DATA}/"):
        problems.append(Invalid(f"{SAMPLE_DATA}/", "is missing or empty: it must hold the workset's data"))
    priority, samples, references, data_bytes, not_before_ms = Priority.NORMAL, 0, 0, 0, None
    if INFO_FILE in listing.files:
        try:
            info = await _read(source, folder + INFO_FILE, INFO_FILE, INFO_MAX_BYTES)
            priority, found = check_priority(info)
            not_before_ms, when_problems = check_not_before(info)
            problems += found + [p for p in when_problems if p.message not in {f.message for f in found}]
        except Invalid as exc:
            problems.append(exc)
    if MANIFEST in listing.files:
        try:
            manifest, found = check_manifest(await _read(source, folder + MANIFEST, MANIFEST, max_manifest_bytes))
        except Invalid as exc:
            problems.append(exc)
        else:
            targets: dict[Reference, tuple[str, str]] = {}
            for reference in manifest.references:
                try:
                    targets[reference] = resolve(reference, bucket=source.bucket, folder=folder)
                except Invalid as exc:
                    found.append(exc)
            missing, data_bytes = await _sizes(source, targets)
            found += missing
            found.sort(key=lambda p: (p.line or 0, p.column or 0))
            problems += found
            samples, references = len(manifest.rows), len(set(targets.values()))
    if problems:
        more = f" (and {len(problems) - 1} more: `workset-monitor validate` lists them)" if len(problems) > 1 else ""
        reason = f"{problems[0]}{more}"
        return Verdict(
            kind="invalid",
            priority=priority,
            reason=reason,
            sentinel=legacy.READY,
            problems=tuple(problems),
            samples=samples,
            references=references,
            data_bytes=data_bytes,
        )
    return Verdict(
        kind="new",
        priority=priority,
        sentinel=legacy.READY,
        samples=samples,
        references=references,
        data_bytes=data_bytes,
        not_before_ms=not_before_ms,
    )


async def _read(source: Source, key: str, name: str, max_bytes: int) -> bytes:
    try:
        return await source.read(key, max_bytes=max_bytes)
    except TooLarge:
        raise Invalid(name, f"is larger than {max_bytes} bytes (limit: scan.max_manifest_bytes)") from None


async def _sizes(source: Source, targets: dict[Reference, tuple[str, str]]) -> tuple[list[Invalid], int]:
    """A problem for each reference whose object does not exist, and the total size of the distinct ones that do
    (one HEAD per distinct object, eight at a time)."""
    distinct = sorted(set(targets.values()))
    gate = asyncio.Semaphore(HEAD_CONCURRENCY)

    async def size(target: tuple[str, str]) -> int | None:
        async with gate:
            return await source.size(*target)

    found = dict(zip(distinct, await asyncio.gather(*(size(t) for t in distinct)), strict=True))
    missing = [
        Invalid(MANIFEST, f"{ref.header}: s3://{bucket}/{key} does not exist", line=ref.line, column=ref.column)
        for ref, (bucket, key) in targets.items()
        if found[(bucket, key)] is None
    ]
    return missing, sum(n for n in found.values() if n is not None)
