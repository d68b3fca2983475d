"""What a killed controller left: the next command stops it and removes its SSH control
directory (a kill after the journal closed skipped the deploy's own clean-up)."""

from __future__ import annotations

from pathlib import Path

from rollout_py.procs import stop_leftovers


def test_the_control_directory_of_a_killed_deploy_is_removed(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    control = tmp_path / "rollout-cp-20261202T000000Z-abcdef"
    control.mkdir()
    (control / "not-a-socket").write_text("")  # skipped: no master to ask
    assert stop_leftovers(runs, str(control)) == []
    assert not control.exists()
    assert runs.exists()  # the record's runs stay
