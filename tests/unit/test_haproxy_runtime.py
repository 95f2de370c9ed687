"""The Runtime API parsers on replies captured from haproxy 2.6 (Debian 12) and 3.0 (Debian 13),
and the client against fakes.

The data files are haproxy's exact bytes (tests/integration/capture_haproxy_replies.py), one
directory per haproxy release (data/haproxy/2.6/, data/haproxy/3.0/); every test that reads them
runs once per release: app1 ready and up, app2 set to maint, app3 (weight 100) set to drain, app4
taken down by an agent-check, app5 `disabled` in haproxy.cfg.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pretix_agent.errors import AgentError
from pretix_agent.haproxy.replies import (
    SRV_ADMF_CMAINT,
    SRV_ADMF_FDRAIN,
    SRV_ADMF_FMAINT,
    ProcessIdentity,
    RuntimeApiError,
    parse_info,
    parse_servers_state,
    parse_stat_csv,
    process_identity,
    refusal,
    split_outputs,
)
from pretix_agent.haproxy.runtime import RuntimeApi, states_by_server, write_state_file
from tests.ports import refused_port

DATA = Path(__file__).parent / "data" / "haproxy"
RELEASES = sorted(path.name for path in DATA.iterdir() if path.is_dir())


def test_replies_of_debian_12s_and_debian_13s_haproxy_are_both_here():
    assert RELEASES == ["2.6", "3.0"]


@pytest.fixture(params=RELEASES, ids=lambda release: f"haproxy{release}")
def release(request: pytest.FixtureRequest) -> str:
    """The haproxy release ("2.6", "3.0") whose captured replies a test reads."""
    return str(request.param)


@pytest.fixture
def captured(release: str) -> Callable[[str], str]:
    """Read one captured reply (by name) of the release under test."""
    return lambda name: (DATA / release / f"{name}.txt").read_text()


# --------------------------------------------------------------------------------------------- show servers state


def test_servers_state_from_haproxy_decodes_each_servers_admin_and_operational_state(captured):
    servers = states_by_server(parse_servers_state(captured("show_servers_state")))
    assert list(servers) == [("pretix", f"app{n}") for n in range(1, 6)]
    app1, app2, app3, app4, _ = servers.values()
    assert (app1.admin, app1.forced, app1.up, app1.operational) == ("ready", "ready", True, "running")
    assert (app2.admin, app2.forced, app2.up, app2.admin_flags) == ("maint", "maint", False, SRV_ADMF_FMAINT)
    assert (app3.admin, app3.forced, app3.up, app3.admin_flags) == ("drain", "drain", True, SRV_ADMF_FDRAIN)
    assert (app3.weight, app3.initial_weight) == (100, 100)
    assert (app4.admin, app4.up, app4.operational) == ("ready", False, "stopped")  # agent-check said down
    assert app4.fields["srv_agent_addr"] == "127.0.0.1"


def test_a_server_disabled_in_the_configuration_is_maint_with_the_forced_and_the_config_bit(captured):
    app5 = parse_servers_state(captured("show_servers_state"))[4]
    assert app5.admin_flags == SRV_ADMF_FMAINT | SRV_ADMF_CMAINT == 5
    assert app5.admin_flag_names == ("FMAINT", "CMAINT")
    assert (app5.admin, app5.forced) == ("maint", "maint")


def test_servers_state_keeps_address_port_ids_and_every_raw_column(captured):
    app1 = parse_servers_state(captured("show_servers_state_backend"))[0]
    assert (app1.backend_id, app1.server_id, app1.address) == (3, 1, "127.0.0.1")
    assert app1.port is not None and app1.port > 0
    assert len(app1.fields) == 25 and app1.fields["srv_check_result"] == "3"


def test_inherited_and_dns_maintenance_bits_also_mean_maint_but_not_forced(captured):
    header = captured("show_servers_state").split("\n")[1]
    for flags, admin in ((0x02, "maint"), (0x20, "maint"), (0x10, "drain"), (0x40, "ready")):
        text = f"1\n{header}\n3 pretix 1 app1 127.0.0.1 2 {flags} 1 1 0 1 0 2 0 0 0 0 - 80 - 0 0 - - 0\n\n"
        server = parse_servers_state(text)[0]
        assert (server.admin, server.forced) == (admin, "ready"), flags


def test_servers_state_of_an_older_release_with_twenty_columns_parses_by_the_header_names():
    names = "be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight " \
            "srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state " \
            "srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord"
    text = f"1\n# {names}\n3 pretix 1 app1 10.0.0.1 2 8 0 1 7 1 0 2 0 0 0 0 - 8000 -\n"
    (server,) = parse_servers_state(text)
    assert (server.admin, server.weight, server.port, server.seconds_since_change) == ("drain", 0, 8000, 7)


def test_servers_state_of_an_empty_configuration_is_an_empty_list(captured):
    header = captured("show_servers_state").split("\n")[1]
    assert parse_servers_state(f"1\n{header}\n\n") == []


@pytest.mark.parametrize(("text", "words"), [
    ("", "it is empty"),
    ("\n", "it is empty"),
    ("2\n# be_id be_name\n", "format version 2 is not supported"),
    ("hello\n", "line 1 should be the format version 1"),
    ("1\n", "line 2 should be the column header"),
    ("1\n# be_id be_name srv_id\n", "the header lacks srv_name"),
    ("No such backend.\n\n", "line 1 should be the format version 1, got 'No such backend.'"),
])
def test_a_reply_that_is_not_a_servers_state_gives_one_clear_error(text, words):
    with pytest.raises(RuntimeApiError) as error:
        parse_servers_state(text)
    assert error.value.kind == "garbage"
    assert words in str(error.value)
    assert "\n" not in str(error.value)


def test_a_truncated_servers_state_line_names_the_line_and_its_column_count(captured):
    text = captured("show_servers_state")
    cut = text[: text.index("\n3 pretix 3") + 20] + "\n"
    with pytest.raises(RuntimeApiError, match=r"line 5 has 5 columns, the header 25") as error:
        parse_servers_state(cut)
    assert error.value.kind == "garbage"


def test_a_non_numeric_admin_state_is_garbage_with_the_column_named(captured):
    text = captured("show_servers_state").replace(" 127.0.0.1 2 0 1 1 ", " 127.0.0.1 2 X 1 1 ", 1)
    with pytest.raises(RuntimeApiError, match=r"line 3: srv_admin_state is 'X', not a number"):
        parse_servers_state(text)


def test_runtime_api_error_is_an_agent_error():
    assert issubclass(RuntimeApiError, AgentError)


# --------------------------------------------------------------------------------------------- show info


def test_show_info_from_haproxy_has_pid_start_time_and_version(captured, release):
    info = parse_info(captured("show_info"))
    assert info["Name"] == "HAProxy"
    assert info["Version"].startswith(f"{release}.")
    assert info["Pid"].isdigit() and info["Start_time_sec"].isdigit() and info["Uptime_sec"].isdigit()
    assert info["Unstoppable Jobs"].isdigit()  # keys with spaces are kept


def test_process_identity_is_pid_and_start_time_and_ignores_version_and_uptime(captured, release):
    identity = process_identity(parse_info(captured("show_info")))
    assert identity.pid > 0 and identity.start_time is not None
    assert identity.version.startswith(f"{release}.")
    same = ProcessIdentity(identity.pid, identity.start_time, version="other", uptime=12345)
    assert identity == same
    assert identity != ProcessIdentity(identity.pid + 1, identity.start_time)  # a reload: new worker
    assert identity != ProcessIdentity(identity.pid, (identity.start_time or 0) + 5)  # a restart reusing the pid
    assert str(identity).startswith(f"haproxy {release}.")


def test_process_identity_without_start_time_is_the_pid_alone():
    assert process_identity({"Pid": "42"}) == ProcessIdentity(42, None)


@pytest.mark.parametrize(("text", "words"), [
    ("", "it is empty"),
    ("Name: HAProxy\n", "there is no Pid line"),
    ("Name: HAProxy\nthis is not haproxy\n", "line 2 is not \"Key: value\""),
])
def test_a_reply_that_is_not_show_info_gives_one_clear_error(text, words):
    with pytest.raises(RuntimeApiError, match=words) as error:
        parse_info(text)
    assert error.value.kind == "garbage"


def test_a_non_numeric_pid_is_garbage():
    with pytest.raises(RuntimeApiError, match="Pid is 'x1', not a number"):
        process_identity({"Pid": "x1"})


# --------------------------------------------------------------------------------------------- show stat


def test_show_stat_from_haproxy_has_frontend_backend_and_each_server_with_status_and_agent_reason(captured):
    rows = parse_stat_csv(captured("show_stat"))
    by_name = {(row.proxy, row.name): row for row in rows}
    assert ("fe", "FRONTEND") in by_name and ("pretix", "BACKEND") in by_name
    assert [row.status for row in rows if row.is_server] == ["UP", "MAINT", "DRAIN", "DOWN (agent)", "MAINT"]
    app4 = by_name["pretix", "app4"]
    assert app4.get("last_agt") == "via agent : down (web-app4: connection refused)"
    assert app4.get("agent_status") == "L7STS"
    assert by_name["pretix", "app1"].sessions == 0
    assert by_name["pretix", "app3"].weight == 100
    assert by_name["pretix", "app1"].get("no such column") == ""


@pytest.mark.parametrize("text", ["", "pretix,app1,0\n", "Permission denied\n\n"])
def test_a_reply_that_is_not_show_stat_gives_one_clear_error(text):
    with pytest.raises(RuntimeApiError, match="line 1 should be the CSV header") as error:
        parse_stat_csv(text)
    assert error.value.kind == "garbage"


def test_a_show_stat_row_with_missing_columns_is_garbage(captured):
    text = captured("show_stat")
    lines = text.split("\n")
    lines[2] = ",".join(lines[2].split(",")[:10])
    with pytest.raises(RuntimeApiError, match="line 3 has 10 columns"):
        parse_stat_csv("\n".join(lines))


# --------------------------------------------------------------------------------------------- outputs, refusals


def test_three_commands_in_one_exchange_split_into_three_outputs_at_the_empty_lines(captured):
    ready, missing, state = split_outputs(captured("three_commands"), 3)
    assert ready == ""
    assert missing == "No such server.\n"
    assert len(parse_servers_state(state)) == 5


def test_a_reply_with_fewer_outputs_than_commands_is_garbage():
    with pytest.raises(RuntimeApiError, match=r"expected 2 output\(s\) ending in an empty line, got 1"):
        split_outputs("No such server.\n\n", 2)


def test_a_reply_cut_in_the_middle_of_a_line_is_garbage(captured):
    with pytest.raises(RuntimeApiError, match="ends in the middle of a line"):
        split_outputs(captured("show_servers_state")[:300], 1)


def test_a_reply_without_its_final_empty_line_is_garbage():
    with pytest.raises(RuntimeApiError, match="and a partial one"):
        split_outputs("1\n# be_id\n", 1)


@pytest.mark.parametrize(("name", "kind", "words"), [
    ("no_such_backend", "unknown_backend", "No such backend"),
    ("cant_find_backend", "unknown_backend", "Can't find backend"),
    ("no_such_server", "unknown_server", "No such server"),
    ("permission_denied", "denied", "Permission denied: the socket is not at `level admin`"),
    ("unknown_command", "rejected", "Unknown command"),
])
def test_haproxys_refusals_become_errors_of_their_kind(name, kind, words, captured):
    (output,) = split_outputs(captured(name), 1)
    error = refusal("set server pretix/app1 state maint", output)
    assert error is not None and error.kind == kind
    assert words in str(error) and "\n" not in str(error)
    assert str(error).startswith("haproxy refused 'set server pretix/app1 state maint': ")


def test_empty_output_and_data_are_no_refusal(captured):
    assert refusal("set server pretix/app1 state ready", "") is None
    assert refusal("show servers state", captured("show_servers_state")) is None


# --------------------------------------------------------------------------------------------- the client, on fakes


class FakeRuntimeSocket:
    """A Unix socket server that answers each connection with `reply(line)` (None: never answers)."""

    def __init__(self, path: Path, reply: Callable[[str], bytes | None]):
        self.path = path
        self.reply = reply
        self.lines: list[str] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            data = b""
            while not data.endswith(b"\n"):
                chunk = connection.recv(4096)
                if not chunk:
                    break
                data += chunk
            self.lines.append(data.decode())
            answer = self.reply(data.decode())
            if answer is None:
                self.held.append(connection)  # accepted, never answered
                continue
            connection.sendall(answer)
            connection.close()

    def close(self) -> None:
        self.listener.close()
        for connection in self.held:
            connection.close()


@pytest.fixture
def fake(tmp_path) -> Iterator[Callable[[Callable[[str], bytes | None]], FakeRuntimeSocket]]:
    fakes: list[FakeRuntimeSocket] = []

    def make(reply: Callable[[str], bytes | None]) -> FakeRuntimeSocket:
        server = FakeRuntimeSocket(tmp_path / f"fake{len(fakes)}.sock", reply)
        fakes.append(server)
        return server

    yield make
    for server in fakes:
        server.close()


def test_the_client_sends_one_line_with_the_commands_separated_by_semicolons(fake, captured):
    server = fake(lambda line: captured("three_commands").encode())
    outputs = RuntimeApi(str(server.path)).execute("set server pretix/app1 state ready",
                                                    "set server pretix/nosuchserver state drain",
                                                    "show servers state pretix")
    assert server.lines == ["set server pretix/app1 state ready; set server pretix/nosuchserver state drain; "
                            "show servers state pretix\n"]
    assert outputs[1] == "No such server.\n"


def test_the_client_reads_the_servers_state_and_sets_a_state(fake, captured):
    replies = {"show servers state": captured("show_servers_state"), "set server": captured("set_server_ok")}
    server = fake(lambda line: next(v for k, v in replies.items() if line.startswith(k)).encode())
    api = RuntimeApi(str(server.path))
    assert [s.admin for s in api.servers_state()] == ["ready", "maint", "drain", "ready", "maint"]
    api.set_server_state("pretix", "app2", "ready")
    assert server.lines[-1] == "set server pretix/app2 state ready\n"


def test_a_server_that_accepts_and_never_answers_times_out_within_the_timeout(fake):
    server = fake(lambda line: None)
    started = time.monotonic()
    with pytest.raises(RuntimeApiError) as error:
        RuntimeApi(str(server.path), timeout=0.3).servers_state()
    assert time.monotonic() - started < 1.0
    assert error.value.kind == "timeout"
    assert str(error.value) == f"haproxy Runtime API at {server.path}: no complete answer within 0.3 s"


def test_a_server_answering_nonsense_is_garbage(fake):
    server = fake(lambda line: b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(RuntimeApiError, match="haproxy's Runtime API reply is not in the expected format") as error:
        RuntimeApi(str(server.path)).servers_state()
    assert error.value.kind == "garbage"


def test_a_server_answering_binary_is_garbage(fake):
    server = fake(lambda line: b"\xff\xfe\x00\n\n")
    with pytest.raises(RuntimeApiError, match="the reply is not text") as error:
        RuntimeApi(str(server.path)).info()
    assert error.value.kind == "garbage"


def test_a_server_that_closes_without_a_word_is_garbage(fake):
    server = fake(lambda line: b"")
    with pytest.raises(RuntimeApiError, match=r"got 0 complete output\(s\)") as error:
        RuntimeApi(str(server.path)).info()
    assert error.value.kind == "garbage"


def test_a_set_server_answered_with_unexpected_text_is_rejected(fake, captured):
    server = fake(lambda line: captured("bad_state_word").encode())
    with pytest.raises(RuntimeApiError, match="expects 'ready', 'drain' and 'maint'") as error:
        RuntimeApi(str(server.path)).set_server_state("pretix", "app1", "drain")
    assert error.value.kind == "rejected"


def test_a_missing_socket_file_says_so_and_how_to_configure_it(tmp_path):
    with pytest.raises(RuntimeApiError) as error:
        RuntimeApi(str(tmp_path / "admin.sock")).info()
    assert error.value.kind == "missing"
    assert "no such socket" in str(error.value) and "level admin" in str(error.value)


def test_a_socket_file_nobody_listens_on_is_connection_refused(tmp_path):
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))  # bound, never listening: what a killed haproxy leaves behind
        with pytest.raises(RuntimeApiError, match="connection refused: haproxy is not running") as error:
            RuntimeApi(str(path)).info()
    assert error.value.kind == "refused"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_a_socket_the_agents_user_may_not_open_is_permission_denied(tmp_path, fake):
    server = fake(lambda line: b"\n")
    os.chmod(server.path, 0o600)
    tmp_path.chmod(0o755)
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            RuntimeApi(str(server.path)).info()
        except RuntimeApiError as error:
            code = 0 if error.kind == "permission" and "mode 660 group" in str(error) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_tcp_address_nobody_listens_on_is_connection_refused():
    with refused_port() as port, pytest.raises(RuntimeApiError, match="connection refused") as error:
        RuntimeApi(f"127.0.0.1:{port}").info()
    assert error.value.kind == "refused"


@pytest.mark.parametrize("name", ["app1;shutdown sessions", "app 1", "app1\nshow info", "", "äpp"])
def test_names_that_could_smuggle_a_second_command_are_refused_before_sending(name, tmp_path):
    api = RuntimeApi(str(tmp_path / "never-used.sock"))
    with pytest.raises(RuntimeApiError, match="is not a valid haproxy name") as error:
        api.set_server_state("pretix", name, "maint")
    assert error.value.kind == "rejected"


def test_an_unknown_admin_state_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError, match="state must be one of ready, drain, maint"):
        RuntimeApi(str(tmp_path / "x.sock")).set_server_state("pretix", "app1", "down")


def test_raw_commands_with_separators_are_refused(tmp_path):
    with pytest.raises(RuntimeApiError, match="a command must be one plain ASCII line"):
        RuntimeApi(str(tmp_path / "x.sock")).execute("show info; show stat")


def test_the_state_file_is_written_atomically_and_readable_by_haproxy(tmp_path, captured):
    path = tmp_path / "server-state"
    write_state_file(path, captured("show_servers_state"))
    assert path.read_text() == captured("show_servers_state")
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["server-state"]
