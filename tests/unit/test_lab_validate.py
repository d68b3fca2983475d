"""`lab up` refuses bad input before it builds anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout_py.errors import InputError
from rollout_py.lab import lab as lab_mod


def test_a_lab_dir_too_long_for_lb2s_admin_socket_is_refused(tmp_path: Path) -> None:
    suffix = "/hosts/lb2/run/haproxy/admin.sock"  # LB2's admin socket under the lab dir
    fits = tmp_path / ("d" * (lab_mod.UNIX_PATH_MAX - len(suffix) - len(str(tmp_path)) - 1))
    assert len(str(fits / "hosts/lb2/run/haproxy/admin.sock")) == lab_mod.UNIX_PATH_MAX
    lab_mod._validate(fits, 2, 2)
    too_long = Path(str(fits) + "d")
    with pytest.raises(InputError, match=r"lab dir .* is too long: .*admin.sock, has 108 bytes"
                                         r" and a unix socket's path at most 107"):
        lab_mod.up(too_long, n_hosts=2, n_lbs=2)
    assert not too_long.exists()  # refused before anything was built
    lab_mod._validate(too_long, 2, 1)  # one LB: no socket under the lab dir
