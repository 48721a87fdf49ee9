"""Dependencies point down (STYLE rule 2): a module may import only modules on its own layer or below."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

# Lowest first. A module not listed here fails the test, so every new module gets a place on purpose.
LAYERS: list[set[str]] = [
    {"monitor", "monitor.errors", "monitor.clock", "monitor.model", "monitor.terminal", "monitor.recorder"},
    {"monitor.child"},
    {"monitor.states", "monitor.manifest", "monitor.legacy", "monitor.daylily", "monitor.daylily.state"},
    {"monitor.daylily.scripts", "monitor.daylily.pcluster", "monitor.daylily.work"},
    {"monitor.selection"},
    {"monitor.sections"},
    {"monitor.config", "monitor.logs", "monitor.daylily.remote"},
    {"monitor.daylily.steps"},
    {"monitor.ports", "monitor.loops", "monitor.live"},
    {"monitor.step_logs"},
    {"monitor.aws", "monitor.aws.codec", "monitor.aws.clients", "monitor.aws.emulator", "monitor.aws.demo_steps"},
    {
        "monitor.aws.schema",
        "monitor.aws.table_io",
        "monitor.aws.s3",
        "monitor.aws.sqs",
        "monitor.memory",
        "monitor.aws.backup",
        "monitor.aws.run_states",
        "monitor.aws.instances",
    },
    {"monitor.aws.outbox_rows"},
    {"monitor.aws.dynamo"},
    {
        "monitor.notify",
        "monitor.notify.filters",
        "monitor.notify.message",
        "monitor.notify.doorbell",
        "monitor.notify.http",
        "monitor.metrics",
        "monitor.sideport",
    },
    {"monitor.notify.linear", "monitor.notify.webhook", "monitor.aws.sns", "monitor.aws.cloudwatch"},
    {"monitor.notify.passes", "monitor.notify.sending", "monitor.notify.rests"},
    {
        "monitor.notify.outbox",
        "monitor.actions",
        "monitor.leases",
        "monitor.holding",
        "monitor.policy",
        "monitor.validation",
        "monitor.sentinels",
        "monitor.steps",
        "monitor.systemd",
    },
    {"monitor.roles", "monitor.known_folders"},
    {"monitor.sweeper", "monitor.scanner", "monitor.migration", "monitor.driver", "monitor.registration"},
    {
        "monitor.events",
        "monitor.render",
        "monitor.report",
        "monitor.by_hand",
        "monitor.presence",
        "monitor.fleet_view",
        "monitor.watch",
        "monitor.intake",
        "monitor.gauges",
        "monitor.reloader",
    },
    {"monitor.services"},
    {"monitor.supervisor"},
    {"monitor.preflight", "monitor.iam", "monitor.app"},
    {"monitor.demo", "monitor.commands", "monitor.operator_commands", "monitor.step_log_view"},
    {"monitor.cli", "monitor.daylily.cli"},
    {"monitor.__main__"},
]
LEVEL = {module: level for level, group in enumerate(LAYERS) for module in group}
ADAPTER_ONLY = ("boto3", "botocore", "moto")  # only monitor.aws.* (and the composition root) may touch these


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_every_module_has_a_layer_and_imports_only_downwards() -> None:
    problems = []
    for path in sorted((ROOT / "monitor").rglob("*.py")):
        name = module_name(path)
        if name not in LEVEL:
            problems.append(f"{name} has no layer in tests/test_architecture.py")
            continue
        for target in imports(path):
            if target in LEVEL and LEVEL[target] > LEVEL[name]:
                problems.append(f"{name} (layer {LEVEL[name]}) imports {target} (layer {LEVEL[target]})")
            if target.split(".")[0] in ADAPTER_ONLY and not name.startswith("monitor.aws"):
                problems.append(f"{name} imports {target}: AWS libraries belong in monitor.aws")
    assert not problems, "\n".join(problems)


# Every `while` loop in monitor/ that sleeps, besides the one in loops.repeat, with the bound that makes it a wait or
# a retry rather than recurring work (which goes through Loops.poll or loops.repeat). A new one fails the test: give
# it a bound and a line here, or use the helper.
BOUNDED_WAITS = {
    ("monitor/loops.py", "repeat"): "the one loop: recurring work, cut short by its event",
    ("monitor/holding.py", "_write"): "retries of one fenced write, given up at the renew deadline",
    ("monitor/holding.py", "_landed"): "reads of whether one write landed, given up at the renew deadline",
    ("monitor/steps.py", "_run"): "re-runs of a poll step, until its timeout_s",
    ("monitor/steps.py", "_exited"): "a child process's exit, which kill_grace_s and SIGKILL bound",
    ("monitor/aws/table_io.py", "_batch_get"): "the keys DynamoDB left unprocessed, each answer making progress",
    ("monitor/aws/schema.py", "_wait_active"): "`init` waiting for the table to be ACTIVE, until timeout_s",
    ("monitor/demo.py", "_watch"): "`demo` watching its worksets, until timeout_s",
    ("monitor/child.py", "side_port"): "reading a child daemon's log for its side port, until timeout_s",
    ("monitor/daylily/steps.py", "_await"): "the `cluster` step waiting for a cluster, until cluster_wait_minutes",
}


def sleeping_loops(root: Path = ROOT) -> set[tuple[str, str]]:
    found = set()
    for path in sorted((root / "monitor").rglob("*.py")):
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for loop in (n for n in ast.walk(function) if isinstance(n, ast.While)):
                called = {
                    n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
                    for n in ast.walk(loop)
                    if isinstance(n, ast.Call)
                }
                if any("sleep" in name or "pause" in name for name in called):
                    found.add((str(path.relative_to(root)), function.name))
    return found


def test_recurring_work_goes_through_the_one_loop_helper() -> None:
    assert sleeping_loops() == set(BOUNDED_WAITS)


def test_the_loop_check_sees_a_hand_rolled_loop(tmp_path: Path) -> None:
    (tmp_path / "monitor").mkdir()
    (tmp_path / "monitor" / "engine.py").write_text(
        "async def forever(clock):\n    while True:\n        await clock.sleep(1)\n"
    )
    assert sleeping_loops(tmp_path) == {("monitor/engine.py", "forever")}


def private_writes(root: Path = ROOT) -> list[str]:
    """Assignments in tests/ that reach into another object's private attributes (``thing._field = ...``,
    ``thing._part.field = ...``): a test drives the product through what it offers, or builds it with the parts it
    needs."""
    found = []
    for path in sorted((root / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign):
                targets = [t for target in node.targets for t in _unpacked(target)]
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            else:
                continue
            for target in targets:
                private = _private_path(target)
                if private:
                    found.append(f"{path.relative_to(root)}:{node.lineno} sets {private}")
    return found


def _unpacked(target: ast.expr) -> list[ast.expr]:
    return [t for e in target.elts for t in _unpacked(e)] if isinstance(target, ast.Tuple | ast.List) else [target]


def _private_path(target: ast.expr) -> str:
    """``._a.b`` when the attribute chain ``target`` assigns through has a private part, and does not start at
    ``self``/``cls`` (a test double's own fields)."""
    chain: list[str] = []
    while isinstance(target, ast.Attribute):
        chain.insert(0, target.attr)
        target = target.value
    if not chain or (isinstance(target, ast.Name) and target.id in ("self", "cls")):
        return ""
    if any(part.startswith("_") and not part.startswith("__") for part in chain):
        return "." + ".".join(chain)
    return ""


def test_no_test_sets_a_private_attribute() -> None:
    # conftest's recorder wraps botocore's one private entry point for the IAM audit (it is botocore's, not ours)
    assert [f for f in private_writes() if "_make_api_call" not in f] == []


def test_the_private_write_check_sees_one(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "def test():\n    sup._clock = None\n    self._ok = 1\n    sup._s.clock, ok.x = 1, 2\n    sup.fine = 3\n"
    )
    assert private_writes(tmp_path) == ["tests/test_x.py:2 sets ._clock", "tests/test_x.py:4 sets ._s.clock"]


def contexts_without_notify(root: Path = ROOT) -> list[str]:
    """``states.Context(...)`` built in monitor/ without ``notify=``: its events would never be notified."""
    found = []
    for path in sorted((root / "monitor").rglob("*.py")):
        for call in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(call, ast.Call)
                and getattr(call.func, "id", getattr(call.func, "attr", "")) == "Context"
                and "notify" not in {k.arg for k in call.keywords}
            ):
                found.append(f"{path.relative_to(root)}:{call.lineno}")
    return found


def test_every_decision_context_says_which_events_are_notified() -> None:
    assert contexts_without_notify() == []


def test_the_context_check_sees_a_context_without_notify(tmp_path: Path) -> None:
    (tmp_path / "monitor").mkdir()
    (tmp_path / "monitor" / "writer.py").write_text(
        "from monitor import states\n"
        "ctx = states.Context(now_ms=1, actor='a')\n"
        "ok = states.Context(now_ms=1, actor='a', notify=f)\n"
    )
    assert contexts_without_notify(tmp_path) == ["monitor/writer.py:2"]
