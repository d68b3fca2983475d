"""Loading an LB host's keys from a known_hosts file reads each line once and finds what
paramiko's own (quadratic) loading would let the connection find: plain and hashed names,
``[host]:port``, the first key of each type."""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest

from rollout_py.balancer.ssh import load_host_keys


def key_line(names: str, key: paramiko.PKey) -> str:
    return f"{names} {key.get_name()} {key.get_base64()}\n"


@pytest.fixture(scope="module")
def keys() -> dict[str, paramiko.PKey]:
    return {name: paramiko.ECDSAKey.generate() for name in ("lb", "lb2nd", "other", "port")} | {
        "rsa": paramiko.RSAKey.generate(1024)}


def known_hosts(tmp_path: Path, keys: dict[str, paramiko.PKey]) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text(
        "# a comment\n\n"
        + "".join(key_line(f"app{i:03d},10.0.0.{i}", keys["other"]) for i in range(200))
        + key_line(paramiko.HostKeys.hash_host("lb.example"), keys["lb"])
        + key_line("lb.example", keys["lb2nd"])  # same type, later: not the one used
        + key_line("lb.example,10.0.0.250", keys["rsa"])
        + key_line("[lb.example]:2222", keys["port"])
        + "lb.example ssh-ed25519\n")  # too short: skipped, as paramiko skips it
    return path


@pytest.mark.parametrize("name", ["lb.example", "10.0.0.250", "[lb.example]:2222", "app007",
                                  "nowhere", "[lb.example]:22"])
def test_finds_what_paramikos_own_loading_finds(tmp_path: Path, keys: dict[str, paramiko.PKey],
                                                name: str) -> None:
    path = known_hosts(tmp_path, keys)
    theirs = paramiko.HostKeys(str(path)).lookup(name)
    ours = paramiko.HostKeys()
    load_host_keys(ours, str(path), name)
    found = ours.lookup(name)
    assert (found is None) == (theirs is None)
    if theirs is not None and found is not None:
        assert {t: found[t].get_base64() for t in found} == {
            t: theirs[t].get_base64() for t in theirs}
    assert len(ours) <= 1  # one entry: only this name's keys were kept


def test_the_hashed_line_first_wins_and_a_later_key_of_its_type_is_not_used(
        tmp_path: Path, keys: dict[str, paramiko.PKey]) -> None:
    ours = paramiko.HostKeys()
    load_host_keys(ours, str(known_hosts(tmp_path, keys)), "lb.example")
    found = ours.lookup("lb.example")
    assert found is not None
    assert found[keys["lb"].get_name()].get_base64() == keys["lb"].get_base64()
    assert found["ssh-rsa"].get_base64() == keys["rsa"].get_base64()


def test_a_missing_file_raises_as_paramikos_does(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_host_keys(paramiko.HostKeys(), str(tmp_path / "none"), "lb")
