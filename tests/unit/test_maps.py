"""HAProxy maps over the runtime API (fake transport): commands sent, answers parsed, refusals."""

from __future__ import annotations

import pytest

from rollout_py.balancer import RuntimeAPI
from rollout_py.balancer.maps import (
    add_map,
    del_map,
    parse_map_file,
    render_map_file,
    replace_map,
    set_map,
    show_map,
)
from rollout_py.errors import BalancerError, UnsafeNameError
from rollout_py.testing import FakeTransport

MAP = "/run/haproxy/pools.map"



def api_with(answers: dict[str, str] | None = None) -> tuple[RuntimeAPI, FakeTransport]:
    transport = FakeTransport(answers)
    return RuntimeAPI(transport), transport


def test_show_map_parses_entries() -> None:
    api, sent = api_with({f"show map {MAP}": "0x55b814218930 live app_blue\n"
                                              "0x55b8142189c0 preview app_green\n\n"})
    assert show_map(api, MAP) == {"live": "app_blue", "preview": "app_green"}
    assert sent.sent == [f"show map {MAP}"]


def test_show_map_by_id_and_empty_map() -> None:
    api, sent = api_with({"show map #2": "\n"})
    assert show_map(api, "#2") == {}
    assert sent.sent == ["show map #2"]


def test_show_map_unknown_map_raises() -> None:
    api, _ = api_with({f"show map {MAP}": "Unknown map identifier. Please use #<id> or <file>.\n"})
    with pytest.raises(BalancerError, match="Unknown map identifier"):
        show_map(api, MAP)


def test_set_add_del_send_exact_commands() -> None:
    api, sent = api_with()
    set_map(api, MAP, "live", "app_green")
    add_map(api, MAP, "canary", "app_blue")
    del_map(api, MAP, "canary")
    assert sent.sent == [f"set map {MAP} live app_green", f"add map {MAP} canary app_blue",
                         f"del map {MAP} canary"]


@pytest.mark.parametrize("answer", ["entry not found.", "Key not found.",
                                    "'set map' expects three parameters: map identifier, key "
                                    "and value."])
def test_set_and_del_detect_refusals(answer: str) -> None:
    api, _ = api_with({f"set map {MAP} nokey x": answer, f"del map {MAP} nokey": answer})
    with pytest.raises(BalancerError, match="refused"):
        set_map(api, MAP, "nokey", "x")
    with pytest.raises(BalancerError, match="refused"):
        del_map(api, MAP, "nokey")


def test_replace_map_prepares_adds_and_commits() -> None:
    api, sent = api_with({f"prepare map {MAP}": "New version created: 7\n"})
    assert replace_map(api, MAP, {"live": "app_green", "preview": "app_blue"}) == 7
    assert sent.sent == [f"prepare map {MAP}", f"add map @7 {MAP} live app_green",
                         f"add map @7 {MAP} preview app_blue", f"commit map @7 {MAP}"]


def test_replace_map_never_commits_after_a_failed_add() -> None:
    api, sent = api_with({f"prepare map {MAP}": "New version created: 3\n",
                          f"add map @3 {MAP} preview app_blue": "Out of memory error.\n"})
    with pytest.raises(BalancerError):
        replace_map(api, MAP, {"live": "app_green", "preview": "app_blue"})
    assert not [c for c in sent.sent if c.startswith("commit")]


def test_replace_map_validates_everything_before_sending() -> None:
    api, sent = api_with({f"prepare map {MAP}": "New version created: 1\n"})
    with pytest.raises(UnsafeNameError):
        replace_map(api, MAP, {"live": "app_green", "x": "a;b"})
    assert sent.sent == []


def test_replace_map_unexpected_prepare_answer() -> None:
    api, sent = api_with({f"prepare map {MAP}": "Unknown map identifier.\n"})
    with pytest.raises(BalancerError, match="Unknown map"):
        replace_map(api, MAP, {"live": "app_green"})
    assert sent.sent == [f"prepare map {MAP}"]


@pytest.mark.parametrize("map_ref", ["pools.map", "/a b", "/a;show map", "/a\nb", "#x", "#",
                                     "/../etc/passwd", ""])
def test_unsafe_map_refs_are_refused(map_ref: str) -> None:
    api, sent = api_with()
    with pytest.raises(UnsafeNameError):
        show_map(api, map_ref)
    with pytest.raises(UnsafeNameError):
        set_map(api, map_ref, "live", "app_blue")
    assert sent.sent == []


@pytest.mark.parametrize("word", ["a b", "a;b", "a\nb", "a\\ b", "#1", "", "é", "a\tb",
                                  "x" * 513])
def test_unsafe_keys_and_values_are_refused(word: str) -> None:
    api, sent = api_with()
    for call in (lambda: set_map(api, MAP, word, "v"), lambda: set_map(api, MAP, "k", word),
                 lambda: add_map(api, MAP, word, "v"), lambda: add_map(api, MAP, "k", word),
                 lambda: del_map(api, MAP, word), lambda: render_map_file({word: "v"})):
        with pytest.raises(UnsafeNameError):
            call()
    assert sent.sent == []


def test_map_file_round_trip() -> None:
    entries = {"live": "app_blue", "preview": "app_green"}
    text = render_map_file(entries)
    assert text.endswith("live app_blue\npreview app_green\n")
    assert parse_map_file(text) == entries


def test_parse_map_file_comments_blanks_and_spacing() -> None:
    text = "# pools\n\n  live\tapp_blue  \n# live app_green\npreview   app green\nlive x\n"
    assert parse_map_file(text) == {"live": "app_blue", "preview": "app green"}


def test_parse_map_file_refuses_a_key_without_value() -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse_map_file("live app_blue\npreview\n")
