"""A workset's Daylily run state: what the old monitor kept in ``~/.cache/daylily-monitor/<workset>/`` on one host,
kept instead in the workset's own S3 folder (``.workset-monitor/daylily/state.json``) so that any host can resume.

Fenced by epoch: every write records the writer's ``WORKSET_EPOCH``, and a writer whose epoch is older than the
stored one is refused (``Stale``) — a paused ex-holder that wakes up cannot undo what the new holder recorded. Writes
are compare-and-swap on the object's version (``RunStates.write(expect=...)``), so two writers never lose each
other's change.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

STATE_DIR = ".workset-monitor/daylily/"
STATE_KEY = STATE_DIR + "state.json"
FORMAT = "workset-daylily-state"
_TRIES = 5


class Stale(Exception):
    """A newer holder of the workset (a higher epoch) has written its run state: this step is a stale holder's."""


class Changed(Exception):
    """The state changed between our read and our write (``RunStates.write``'s condition failed)."""


class Corrupt(Exception):
    """The stored state is not one this program wrote."""


@dataclass(frozen=True, slots=True)
class RunState:
    epoch: int = 0  # the latest writer's WORKSET_EPOCH
    head_node: str | None = None  # the address the steps SSH to
    cluster: str | None = None
    pipeline_dir: str | None = None  # on the head node
    session: str | None = None  # the run's tmux session, once launched
    launched_epoch: int | None = None  # the epoch whose launch started the current run
    reported: str | None = None  # "failed" / "timed out" once `watch` reported it: a new `launch` runs again
    exported: str | None = None  # the results' S3 URI, once `export` verified its fsx_export.yaml
    stage_dir: str | None = None  # on the head node's FSx, where `stage` put the samples
    staged: tuple[str, ...] = ()  # the staged files, relative to stage_dir
    pushed: str | None = None  # the pipeline directory the staged files were copied into (`clone`)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **dataclasses.asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, where: str) -> RunState:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise Corrupt(f"{where}: not JSON ({exc})") from None
        if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
            raise Corrupt(f"{where}: not a {FORMAT} object")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise Corrupt(f"{where}: unknown keys {', '.join(unknown)}")
        for name, value in data.items():
            if name == "staged":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise Corrupt(f"{where}: staged is {value!r}, expected a list of paths")
                data[name] = tuple(value)
                continue
            want = int if name in ("epoch", "launched_epoch") else str
            if value is not None and (type(value) is not want):
                raise Corrupt(f"{where}: {name} is {value!r}, expected {want.__name__}")
        return cls(**data)


class RunStates(Protocol):
    """Where a workset's run state is kept (``monitor.aws.run_states.S3RunStates``)."""

    where: str

    def read(self) -> tuple[RunState | None, Any]:
        """The state and an opaque version for ``write``'s ``expect`` (None, None when there is none yet)."""
        ...

    def write(self, state: RunState, *, expect: Any) -> None:
        """Write ``state`` if the stored version is still ``expect`` (None: if there is none); else ``Changed``."""
        ...


def update(states: RunStates, epoch: int, change: Callable[[RunState], RunState]) -> RunState:
    """Read, refuse a stale writer, apply ``change`` and write it back if it changed anything; retried when another
    writer got in between. Returns the state as written (or as found, when nothing changed)."""
    for _ in range(_TRIES):
        found, version = states.read()
        current = found or RunState()
        if current.epoch > epoch:
            raise Stale(f"{states.where} was written by epoch {current.epoch}; this step runs under epoch {epoch}")
        new = change(dataclasses.replace(current, epoch=epoch))
        if new == found:
            return new
        try:
            states.write(new, expect=version)
        except Changed:
            continue
        return new
    raise Changed(f"{states.where} kept changing while it was written ({_TRIES} tries)")
