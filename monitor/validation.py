"""Looking at one workset folder in S3: is it new, waiting, legacy, ignored, or invalid, and why.

Cost of a new folder: one listing of its own top level, one request to see that ``sample_data/`` is not empty, two
bounded reads (``daylily_info.yaml``, ``stage_samples.tsv``) and one HEAD per distinct data reference in the manifest
(eight at a time). Nothing under ``sample_data/`` is ever listed in full.
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
    parse_manifest,
    parse_priority,
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
    priority = Priority.NORMAL
    try:
        for name in REQUIRED_FILES:
            if name not in listing.files:
                raise Invalid(name, "required file is missing")
        if SAMPLE_DATA not in listing.folders or not await source.has_objects(f"{folder}{SAMPLE_DATA}/"):
            raise Invalid(f"{SAMPLE_DATA}/", "is missing or empty: it must hold the workset's data")
        priority = parse_priority(await _read(source, folder + INFO_FILE, INFO_FILE, INFO_MAX_BYTES))
        manifest = parse_manifest(await _read(source, folder + MANIFEST, MANIFEST, max_manifest_bytes))
        targets = {
            reference: resolve(reference, bucket=source.bucket, folder=folder) for reference in manifest.references
        }
        await _check_exist(source, targets)
    except Invalid as exc:
        return Verdict(kind="invalid", priority=priority, reason=str(exc), sentinel=legacy.READY)
    return Verdict(kind="new", priority=priority, sentinel=legacy.READY)


async def _read(source: Source, key: str, name: str, max_bytes: int) -> bytes:
    try:
        return await source.read(key, max_bytes=max_bytes)
    except TooLarge:
        raise Invalid(name, f"is larger than {max_bytes} bytes (limit: scan.max_manifest_bytes)") from None


async def _check_exist(source: Source, targets: dict[Reference, tuple[str, str]]) -> None:
    distinct = sorted(set(targets.values()))
    gate = asyncio.Semaphore(HEAD_CONCURRENCY)

    async def exists(target: tuple[str, str]) -> bool:
        async with gate:
            return await source.exists(*target)

    found = dict(zip(distinct, await asyncio.gather(*(exists(t) for t in distinct)), strict=True))
    missing = [(ref, target) for ref, target in targets.items() if not found[target]]
    if missing:
        ref, (bucket, key) = missing[0]
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise Invalid(
            MANIFEST, f"{ref.header}: s3://{bucket}/{key} does not exist{more}", line=ref.line, column=ref.column
        )
