"""Linear: one issue per workset in trouble, every later event of that workset as a comment on it.

Idempotent by construction: the issue's id is a UUID derived from the team and the workset id, a comment's id from
the event id, so a retry after a lost response can never create a second issue or comment (Linear refuses a second
entity with the same id; we take that refusal as success). The API key is a secret: sent in the ``Authorization``
header and nowhere else. 429 and 5xx are retried, honouring ``Retry-After`` and the rate-limit reset headers; an
authentication or permission failure is permanent and reported loudly.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

from monitor import errors
from monitor.config import LinearConfig
from monitor.model import PROBLEM_EVENTS, Event, EventType, Priority, Workset
from monitor.notify import http, message
from monitor.ports import Store

NAMESPACE = uuid.UUID("5f0c1d2e-8a7b-4c3d-9e1f-2a3b4c5d6e7f")  # fixed forever: ids must be stable across versions
PRIORITY = {Priority.URGENT: 1, Priority.NORMAL: 3, Priority.LOW: 4}  # Linear: 1 urgent, 3 medium, 4 low
_TEMPORARY_TYPES = {"ratelimited", "internal error", "lock timeout", "network error", "internal server error"}

ISSUE_CREATE = """mutation($input: IssueCreateInput!) {
  issueCreate(input: $input) { success issue { id identifier url } }
}"""
COMMENT_CREATE = """mutation($input: CommentCreateInput!) {
  commentCreate(input: $input) { success comment { id } }
}"""


def issue_id(team_id: str, workset_id: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"issue/{team_id}/{workset_id}"))


def comment_id(team_id: str, event_id: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"comment/{team_id}/{event_id}"))


class LinearChannel:
    name = "linear"

    def __init__(
        self,
        cfg: LinearConfig,
        *,
        has_issue: Callable[[Event], Awaitable[bool]],
        executor: Executor | None = None,
    ) -> None:
        self._cfg = cfg
        self._executor = executor  # the channel's worker threads (a pool of its own in the daemon)
        self._has_issue = has_issue  # whether an earlier problem of this workset already made its issue

    async def send(self, event: Event, ws: Workset | None) -> str:
        team = self._cfg.team_id
        if event.type is EventType.TEST:
            await self._mutate(ISSUE_CREATE, self._issue(event, ws, str(uuid.uuid4())))
            return "sent"
        exists = await self._has_issue(event)
        if not exists and event.type in PROBLEM_EVENTS:
            await self._mutate(ISSUE_CREATE, self._issue(event, ws, issue_id(team, event.workset_id)))
            return "sent"
        if not exists:
            return "skipped"  # Linear hears about problems; a workset that never had one has no issue
        text = f"**{event.type.value}**\n\n" + message.body(event, ws)
        comment: dict[str, object] = {
            "id": comment_id(team, event.event_id),
            "issueId": issue_id(team, event.workset_id),
            "body": text,
        }
        await self._mutate(COMMENT_CREATE, comment)
        return "sent"

    def _issue(self, event: Event, ws: Workset | None, issue: str) -> dict[str, object]:
        return {
            "id": issue,
            "teamId": self._cfg.team_id,
            "title": f"Workset {event.workset_id}: {event.type.value}"[:250],
            "description": "```\n" + message.body(event, ws) + "\n```",
            "priority": PRIORITY[event.priority],
        }

    async def _mutate(self, query: str, input_: dict[str, object]) -> None:
        key = self._cfg.api_key.get_secret_value()
        headers = {
            "Content-Type": "application/json",
            "Authorization": key if key.startswith(("lin_api_", "Bearer ")) else f"Bearer {key}",
        }
        payload = json.dumps({"query": query, "variables": {"input": input_}}).encode()
        try:
            response = await http.post(
                self._cfg.api_url, payload, headers=headers, timeout_s=self._cfg.timeout_s, executor=self._executor
            )
        except errors.DeliveryError as exc:
            if "HTTP 401" in str(exc) or "HTTP 403" in str(exc):
                raise errors.DeliveryError(
                    f"Linear refused the API key ({exc}); check notify.linear.api_key", temporary=False
                ) from None
            raise
        _check(response)


def _check(response: http.Response) -> None:
    try:
        data = response.json()
    except ValueError:
        raise errors.DeliveryError("Linear answered with something other than JSON", temporary=True) from None
    problems = data.get("errors") if isinstance(data, dict) else None
    if not problems:
        return
    first = problems[0] if isinstance(problems, list) and problems else {}
    text = str(first.get("message", "unknown error"))
    kind = str((first.get("extensions") or {}).get("type", "")).lower()
    if "already exists" in text.lower() or "duplicate" in text.lower():
        return  # our own earlier attempt created it; its response was lost
    if kind in _TEMPORARY_TYPES:
        raise errors.DeliveryError(f"Linear: {text}", temporary=True)
    if kind in ("authentication error", "forbidden"):
        raise errors.DeliveryError(f"Linear refused the API key: {text}; check notify.linear.api_key", temporary=False)
    raise errors.DeliveryError(f"Linear: {text} ({kind or 'error'})", temporary=False)


def linear_issue_lookup(store: Store) -> Callable[[Event], Awaitable[bool]]:
    """Whether an earlier problem of ``event``'s workset already reached Linear (and so made its issue)."""

    async def has_issue(event: Event) -> bool:
        history = await store.history(event.workset_id)
        return any(
            e.seq < event.seq and e.type in PROBLEM_EVENTS and e.notified.get("linear") == "sent" for e in history
        )

    return has_issue
