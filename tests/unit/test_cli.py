"""The command line: what it imports, option names that do not clash, the lock error's place."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter: which rollout_py.lab modules does each invocation import?
_IMPORTS = """
import json, sys
from click.testing import CliRunner
from rollout_py.cli import cli

seen = {}
for args in (["--help"], ["plan", "--help"], ["deploy", "--help"], ["history", "--help"],
             ["lock", "status", "--help"], ["lab", "--help"]):
    result = CliRunner().invoke(cli, args)
    seen[" ".join(args)] = {"exit": result.exit_code, "output": result.output,
                            "lab": sorted(m for m in sys.modules if m.startswith("rollout_py.lab"))}
print(json.dumps(seen))
"""


def test_only_lab_commands_import_the_lab() -> None:
    out = subprocess.run([sys.executable, "-c", _IMPORTS], capture_output=True, text=True,
                         timeout=120, cwd=REPO, check=True)
    seen = json.loads(out.stdout)
    for args, info in seen.items():
        assert info["exit"] == 0, (args, info["output"])
        if args != "lab --help":
            assert info["lab"] == [], args
    # The listing names the lab without importing it; `lab` itself loads it, subcommands and all.
    assert "lab " in seen["--help"]["output"] and "A local fleet" in seen["--help"]["output"]
    assert "rollout_py.lab.cli" in seen["lab --help"]["lab"]
    assert {"up", "down", "status", "load", "watch"} <= {
        line.split()[0] for line in seen["lab --help"]["output"].split("Commands:")[1]
        .splitlines() if line.strip()}


def test_the_lazy_listing_says_what_the_lab_group_says() -> None:
    from rollout_py.cli import LAZY_COMMANDS, cli
    from rollout_py.lab.cli import lab

    assert LAZY_COMMANDS["lab"][2] == lab.help
    with click.Context(cli, info_name="rollout") as ctx:
        assert cli.get_command(ctx, "lab") is lab
        assert "lab" in cli.list_commands(ctx)


def _history_calls(monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    from rollout_py import api, operations

    calls: list[int | None] = []

    def fake_history(spec: object, *, state_dir: object = None,
                     limit: int | None = None) -> dict[str, Any]:
        calls.append(limit)
        return {"schema": "rollout.history/1", "fleet": "web", "state_dir": ".", "deploys": []}

    monkeypatch.setattr(api, "load_spec", lambda path: object())
    monkeypatch.setattr(operations, "history", fake_history)
    return calls


@pytest.mark.parametrize("args", [["-n", "3"], ["--count", "3"], ["--count=3"]])
def test_history_takes_n_or_count(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    from rollout_py.cli import cli

    calls = _history_calls(monkeypatch)
    result = CliRunner().invoke(cli, ["history", "--json", *args])
    assert result.exit_code == 0, result.output
    assert calls == [3]


def test_history_has_no_limit_option_to_confuse_with_the_host_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from rollout_py.cli import cli

    calls = _history_calls(monkeypatch)
    # -l/--limit is a host pattern on deploy/plan/rollback; history does not take it.
    for args in (["--limit", "3"], ["-l", "3"]):
        result = CliRunner().invoke(cli, ["history", *args])
        assert result.exit_code == 2 and "No such option" in result.output
    assert calls == []
    for command in ("plan", "deploy", "rollback"):
        help_text = CliRunner().invoke(cli, [command, "--help"]).output
        assert "-l, --limit" in help_text
    assert "-n, --count N" in CliRunner().invoke(cli, ["history", "--help"]).output


def test_lock_held_error_sits_in_the_exception_tree() -> None:
    from rollout_py import errors, lock

    assert lock.LockHeldError is errors.LockHeldError
    assert issubclass(errors.LockHeldError, errors.PreflightError)
    assert issubclass(errors.LockHeldError, errors.RolloutError)
    assert "LockHeldError" in (errors.__doc__ or "")
    hold = lock.Holder(None, "bob", "ops", None, 0.0, "db move", "hold")
    described: errors.LockHolder = hold  # mypy: a Holder is what the error describes
    err = errors.LockHeldError(described)
    assert err.holder is hold and (err.holder.user, err.holder.deploy_id) == ("bob", None)
    assert str(err) == ("fleet is locked: manual hold by bob@ops since 1970-01-01 00:00:00 UTC: "
                        "db move (`rollout lock release` removes it)")
    running = lock.Holder(42, "amy", "ci", "d-1", 0.0, "", "deploy")
    assert str(errors.LockHeldError(running)) == (
        "fleet is locked: deploy d-1 by amy@ci (pid 42) since 1970-01-01 00:00:00 UTC")


def test_errors_imports_nothing_of_rollout_py() -> None:
    # errors is the root of the import graph: lock imports it, never the other way round.
    tree = ast.parse((REPO / "rollout_py" / "errors.py").read_text())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names]
    imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not [name for name in imported if name.startswith("rollout_py")]
