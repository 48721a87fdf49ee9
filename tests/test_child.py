"""The child-daemon harness's reading of its log (the processes themselves: test_daemon_process, chaos, soak, demo)."""

from __future__ import annotations

import json

from monitor.child import last_field


def line(**record: object) -> str:
    return json.dumps(record)


def test_the_latest_matching_line_wins_and_others_are_skipped() -> None:
    log = "\n".join(
        [
            line(event="starting", owner="h:1:a"),  # an earlier daemon appended to the same log
            "a step printed: starting",  # not JSON
            line(event="step ended", note='"starting"'),  # mentions the event, is another
            line(event="starting", owner="h:2:b"),
            line(event="serving metrics", url="http://127.0.0.1:1/metrics"),
            '{"event": "starting", "owner": "h:3:c"',  # cut short: still being written
        ]
    )
    assert last_field(log, "starting", "owner") == "h:2:b"
    assert last_field(log, "serving metrics", "url") == "http://127.0.0.1:1/metrics"
    assert last_field(log, "stopped", "exit_code") is None
    assert last_field("", "starting", "owner") is None
