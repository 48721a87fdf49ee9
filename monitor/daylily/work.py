"""A workset's ``daylily_work.yaml``: the per-workset values the old monitor read (its keys and their aliases, the
first non-empty one winning). Read the way ``monitor.manifest`` reads ``daylily_info.yaml``: only the keys we use, at
the top level, never the rest of the file (it belongs to the pipeline), and without a YAML library.

A value is a scalar (``dy-r: -p produce_snv_concordances``, quotes and a trailing `` #`` comment dropped), a list
(``- item`` lines under the key, joined with spaces), or a mapping whose ``suffix``, ``args``, ``cmd`` or ``command``
entry is the value (as the old monitor accepted).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RUN_KEYS = ("dy_r", "dy-r", "dy", "run", "run_suffix", "run-suffix", "run_cmd", "run-command")
CLONE_KEYS = ("day_clone_args", "day-clone", "clone_args", "clone-args", "clone")
EXPORT_KEYS = ("export_uri", "export-uri", "export")
_ENTRY_KEYS = ("suffix", "args", "cmd", "command")
_KEY = re.compile(r"^(?P<key>[A-Za-z0-9_-]+):(?P<rest>.*)$")


@dataclass(frozen=True, slots=True)
class Work:
    run: str | None = None  # appended to [daylily] run_command (the old dy-r)
    clone_args: str | None = None  # for day-clone, with {workset} and {workdir_name} filled in
    export_uri: str | None = None
    cluster_name: str | None = None  # names the cluster to create when one is created for this workset
    workdir_name: str | None = None
    budget: str | None = None  # ``--budget <name>`` is added to the clone arguments


def _scalar(text: str) -> str:
    text = re.sub(r"\s+#.*$", "", text).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    return text.strip()


def top_level(text: str) -> dict[str, str]:
    """Every top-level key's value as a string (empty when it has none)."""
    values: dict[str, str] = {}
    lines = text.replace("\r\n", "\n").split("\n")
    i = 0
    while i < len(lines):
        match = _KEY.match(lines[i])
        i += 1
        if match is None:
            continue
        key, rest = match["key"], _scalar(match["rest"])
        if rest:
            values.setdefault(key, rest)
            continue
        items: list[str] = []
        entries: dict[str, str] = {}
        while i < len(lines) and (not lines[i].strip() or lines[i][0].isspace()):
            line = lines[i].strip()
            i += 1
            if line.startswith("- "):
                items.append(_scalar(line[2:]))
            elif (inner := _KEY.match(line)) is not None:
                entries.setdefault(inner["key"], _scalar(inner["rest"]))
        entry = next((entries[k] for k in _ENTRY_KEYS if entries.get(k)), "")
        values.setdefault(key, " ".join(items) if items else entry)
    return values


def _first(values: dict[str, str], keys: tuple[str, ...]) -> str | None:
    return next((values[k] for k in keys if values.get(k)), None)


def read(text: str, *, workset_id: str) -> Work:
    values = top_level(text)
    workdir_name = values.get("workdir_name") or None
    clone = _first(values, CLONE_KEYS)
    if clone is not None:
        clone = clone.replace("{workset}", workset_id).replace("{workdir_name}", workdir_name or workset_id)
        if values.get("budget"):
            clone += f" --budget {values['budget']}"
    return Work(
        run=_first(values, RUN_KEYS),
        clone_args=clone,
        export_uri=_first(values, EXPORT_KEYS),
        cluster_name=values.get("cluster_name") or None,
        workdir_name=workdir_name,
        budget=values.get("budget") or None,
    )
