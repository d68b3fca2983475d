"""HAProxy runtime API client: name validation, answer parsing, error detection."""

from __future__ import annotations

import pytest

from rollout_py.balancer import RuntimeAPI, parse_servers_state, parse_stat_csv, validate_name
from rollout_py.balancer.transports import open_transport
from rollout_py.errors import BalancerError, InputError, UnsafeNameError
from rollout_py.testing import FakeTransport

STATE = """1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight \
srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health \
srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord \
srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 app 1 app01 10.213.1.11 2 0 1 1 7 6 3 4 6 0 0 0 - 8080 - 0 0 - - 0
3 app 2 app02 10.213.1.12 2 8 1 1 7 6 3 4 6 0 0 0 - 8080 - 0 0 - - 0
3 app 3 app03 10.213.1.13 0 1 1 1 7 6 3 4 6 0 0 0 - 8080 - 0 0 - - 0
"""



def test_parse_servers_state_reads_admin_and_op_states() -> None:
    rows = {s.name: s for s in parse_servers_state(STATE)}
    assert rows["app01"].admin == "READY" and rows["app01"].in_rotation
    assert rows["app02"].admin == "DRAIN" and not rows["app02"].in_rotation
    assert rows["app03"].admin == "MAINT" and rows["app03"].op == "STOPPED"
    assert rows["app01"].port == 8080 and rows["app01"].address == "10.213.1.11"


def test_parse_servers_state_only_some_servers() -> None:
    every = {s.name: s for s in parse_servers_state(STATE)}
    some = parse_servers_state(STATE, only={"app03", "app01", "app99"})
    assert [s.name for s in some] == ["app01", "app03"]
    assert some == (every["app01"], every["app03"])
    assert parse_servers_state(STATE, only=()) == ()
    # A line it cannot read is still an error when its server is asked for.
    with pytest.raises(BalancerError, match="line: 'app a"):
        parse_servers_state("1\n# be_name srv_name srv_addr srv_op_state srv_admin_state "
                            "srv_uweight\napp a 1\n", only={"a"})


def test_parse_servers_state_rejects_garbage() -> None:
    with pytest.raises(BalancerError):
        parse_servers_state("1\nno header here\n")


def test_parse_servers_state_reads_fields_by_the_header_wherever_they_are() -> None:
    # Another field order, and no srv_port: the port is unknown, the rest read by name.
    rows = parse_servers_state("1\n# srv_name be_name srv_uweight srv_admin_state srv_op_state "
                               "srv_addr\napp01 app 5 1 2 10.0.0.1\n")
    assert rows[0].name == "app01" and rows[0].weight == 5 and rows[0].maint
    assert rows[0].running and rows[0].address == "10.0.0.1" and rows[0].port is None


@pytest.mark.parametrize(("text", "why"), [
    ("1\n# be_name srv_name srv_addr srv_op_state srv_admin_state\napp a 10.0.0.1 2 0\n",
     "no srv_uweight in the header"),
    ("1\n# be_name srv_name srv_addr srv_op_state srv_admin_state srv_uweight\napp a 1\n",
     "a line shorter than the header"),
    ("1\n# be_name srv_name srv_addr srv_op_state srv_admin_state srv_uweight\n"
     "app a 10.0.0.1 UP 0 1\n", "a state that is not a number"),
])
def test_parse_servers_state_names_the_line_it_cannot_read(text: str, why: str) -> None:
    with pytest.raises(BalancerError, match="unexpected 'show servers state' line: 'app a"):
        parse_servers_state(text)


def test_parse_stat_csv_reads_scur() -> None:
    rows = parse_stat_csv("# pxname,svname,qcur,qmax,scur,status,weight,check_status\n"
                          "app,app01,0,0,7,UP,1,L7OK\napp,BACKEND,0,0,7,UP,1,\n")
    assert rows[0].scur == 7 and rows[0].name == "app01" and rows[0].status == "UP"


@pytest.mark.parametrize("name", ["app;disable server app/x", "a\nb", "a b", "", "x" * 129, "é"])
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(UnsafeNameError):
        validate_name("server", name)


def test_valid_names_pass() -> None:
    for name in ("app01", "web-1.prod:east", "A_b"):
        assert validate_name("server", name) == name


def test_unsafe_name_never_reaches_the_socket() -> None:
    fake = FakeTransport({})
    api = RuntimeAPI(fake)
    with pytest.raises(UnsafeNameError):
        api.set_state("app", "app01;shutdown sessions server app/app02", "drain")
    assert fake.sent == []


def test_plain_text_errors_are_detected() -> None:
    api = RuntimeAPI(FakeTransport({"set server app/nope state drain": "No such server.\n"}))
    with pytest.raises(BalancerError, match="No such server"):
        api.set_state("app", "nope", "drain")


def test_unknown_backend_is_an_error() -> None:
    api = RuntimeAPI(FakeTransport({"show servers state nope": "Can't find backend.\n"}))
    with pytest.raises(BalancerError, match="Can't find backend"):
        api.servers_state("nope")


def test_set_state_sends_exact_command() -> None:
    fake = FakeTransport({})
    RuntimeAPI(fake).set_state("app", "app01", "maint")
    assert fake.sent == ["set server app/app01 state maint"]


@pytest.mark.parametrize("url", ["http://x", "unix://relative", "tcp://host", "ssh://host"])
def test_bad_socket_urls_are_input_errors(url: str) -> None:
    with pytest.raises(InputError):
        open_transport(url)


def test_unix_socket_that_does_not_exist_is_a_balancer_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    api = RuntimeAPI(open_transport(f"unix://{tmp_path}/missing.sock"))
    with pytest.raises(BalancerError, match=r"missing\.sock"):
        api.servers_state("app")


def test_many_changes_go_on_one_line_each_validated() -> None:
    fake = FakeTransport({})
    servers = [f"app{i:03d}" for i in range(130)]
    RuntimeAPI(fake).set_many("app", [(s, "state maint") for s in servers])
    assert [len(line.split("; ")) for line in fake.sent] == [64, 64, 2]
    assert fake.sent[0].startswith("set server app/app000 state maint; set server app/app001 ")
    assert [c for line in fake.sent for c in line.split("; ")] == \
        [f"set server app/{s} state maint" for s in servers]


@pytest.mark.parametrize(("server", "what"), [
    ("app01;shutdown sessions server app/app02", "state maint"),
    ("app01", "state maint; shutdown sessions server app/app02"),
    ("app01", "state up"), ("app01", "weight 257"), ("app01", "weight -1"),
])
def test_a_bad_change_in_many_sends_nothing(server: str, what: str) -> None:
    fake = FakeTransport({})
    with pytest.raises((UnsafeNameError, ValueError)):
        RuntimeAPI(fake).set_many("app", [("app00", "weight 256"), (server, what)])
    assert fake.sent == []


def test_a_refused_change_in_a_line_is_named_and_the_rest_still_applied() -> None:
    line = ("set server app/a state ready; set server app/nope state ready; "
            "set server app/b weight 10")
    fake = FakeTransport({line: "No such server.\n",
                          "set server app/nope state ready": "No such server.\n"})
    with pytest.raises(BalancerError, match=r"app/nope state ready.*No such server"):
        RuntimeAPI(fake).set_many("app", [("a", "state ready"), ("nope", "state ready"),
                                          ("b", "weight 10")])
    # The line, then each change alone: the one refused is named, the others sent again.
    assert fake.sent == [line, "set server app/a state ready",
                         "set server app/nope state ready", "set server app/b weight 10"]


def test_lines_parsed_before_are_not_parsed_again() -> None:
    """The maint guard reads a batch's servers ten times a second; a server's line changes
    about once a second. A line known from the answer before (under the same header) gives
    its row as parsed then; a changed line, or a line under another header, is parsed."""
    fake = FakeTransport({"show servers state app": STATE})
    api = RuntimeAPI(fake)
    first = {s.name: s for s in api.servers_state("app")}
    again = {s.name: s for s in api.servers_state("app")}
    assert all(again[n] is first[n] for n in first)  # the very rows: no parse
    fake.answers["show servers state app"] = STATE.replace(" 2 0 1 1 7 ", " 2 1 1 1 8 ")
    changed = {s.name: s for s in api.servers_state("app")}
    assert changed["app01"] is not first["app01"] and changed["app01"].admin == "MAINT"
    assert changed["app02"] is first["app02"]
    lines = STATE.splitlines()
    header, line = lines[1], lines[2]
    sentinel = parse_servers_state(STATE, only={"app03"})[0]
    read: dict[tuple[str, str], object] = {}
    rows = parse_servers_state(STATE, only={"app01"}, known={(header, line): sentinel},
                               into=read)  # type: ignore[arg-type]
    assert rows == (sentinel,) and list(read) == [(header, line)]
    other = STATE.replace("srv_uweight", "srv_uweight ")  # another header line
    assert parse_servers_state(other, only={"app01"}, known={(header, line): sentinel}
                               )[0].name == "app01"
