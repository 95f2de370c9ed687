"""The Runtime API client, the agent-check responder and the example config against a real haproxy."""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pretix_agent.haproxy.agent_check import AgentCheckResponder, agent_answer
from pretix_agent.haproxy.runtime import RuntimeApi, RuntimeApiError

from .haproxy_fixture import HAPROXY, HaproxyFixture, haproxy_unavailable_reason, pid_alive, process_state

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(haproxy_unavailable_reason() is not None, reason=haproxy_unavailable_reason() or ""),
]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO / "conf" / "haproxy" / "haproxy.cfg"


@pytest.fixture(scope="module")
def hx() -> Iterator[HaproxyFixture]:
    """One haproxy shared by the tests that only read or set (and reset) admin states."""
    with HaproxyFixture(servers=2) as fixture:
        yield fixture


@pytest.fixture
def fresh() -> Iterator[HaproxyFixture]:
    """A haproxy of this test's own (reloads, restarts, changed configurations)."""
    with HaproxyFixture(servers=2) as fixture:
        yield fixture


# --------------------------------------------------------------------------------------------- Runtime API


def test_set_server_state_maint_drain_ready_round_trips_through_show_servers_state(hx):
    api = hx.runtime()
    try:
        for state in ("maint", "drain", "ready", "drain", "maint", "ready"):
            api.set_server_state("pretix", "app1", state)
            app1 = hx.server_state("pretix", "app1")
            assert (app1.admin, app1.forced) == (state, state)
            assert app1.up == (state != "maint")  # maint stops the server; drain keeps it up
        assert hx.server_state("pretix", "app2").admin == "ready"
    finally:
        api.set_server_state("pretix", "app1", "ready")


def test_show_stat_shows_maint_and_drain_as_haproxys_status_words(hx):
    api = hx.runtime()
    try:
        api.set_server_state("pretix", "app1", "maint")
        api.set_server_state("pretix", "app2", "drain")
        assert (hx.stat_row("pretix", "app1").status, hx.stat_row("pretix", "app2").status) == ("MAINT", "DRAIN")
    finally:
        api.set_server_state("pretix", "app1", "ready")
        api.set_server_state("pretix", "app2", "ready")
    assert hx.stat_row("pretix", "app1").status == "no check"


def test_a_server_in_maint_gets_no_requests_and_the_other_takes_them_all(hx):
    api = hx.runtime()
    try:
        api.set_server_state("pretix", "app1", "maint")
        assert {hx.request("/").text for _ in range(6)} == {"app2"}
    finally:
        api.set_server_state("pretix", "app1", "ready")
    assert {hx.request("/").text for _ in range(6)} == {"app1", "app2"}


def test_the_client_works_over_a_tcp_stats_socket(hx):
    api = RuntimeApi(hx.tcp_address)
    assert [s.server for s in api.servers_state("pretix")] == ["app1", "app2"]
    assert api.process_identity() == hx.runtime().process_identity()


def test_an_unknown_backend_or_server_is_an_error_in_haproxys_words(hx):
    api = hx.runtime()
    with pytest.raises(RuntimeApiError) as error:
        api.set_server_state("nosuchbackend", "app1", "maint")
    assert (error.value.kind, str(error.value)) == (
        "unknown_backend", "haproxy refused 'set server nosuchbackend/app1 state maint': No such backend: check the "
        "backend's name in haproxy.cfg")
    with pytest.raises(RuntimeApiError) as error:
        api.set_server_state("pretix", "app9", "maint")
    assert error.value.kind == "unknown_server" and ": No such server:" in str(error.value)
    with pytest.raises(RuntimeApiError) as error:
        api.servers_state("nosuchbackend")
    assert error.value.kind == "unknown_backend" and "Can't find backend" in str(error.value)


def test_a_socket_at_level_user_reads_but_set_server_is_permission_denied(hx):
    api = hx.runtime(socket_path=hx.user_socket)
    assert len(api.servers_state()) == 2  # reading needs no admin level
    with pytest.raises(RuntimeApiError) as error:
        api.set_server_state("pretix", "app1", "maint")
    assert error.value.kind == "denied"
    assert str(error.value) == ("haproxy refused 'set server pretix/app1 state maint': Permission denied: the socket "
                                "is not at `level admin` (stats socket ... level admin)")
    assert hx.server_admin("pretix", "app1") == "ready"


def test_a_missing_socket_file_is_an_error_that_says_how_to_configure_it(hx):
    with pytest.raises(RuntimeApiError, match="no such socket: is haproxy running, with `stats socket") as error:
        hx.runtime(socket_path=hx.dir / "nosuch.sock").info()
    assert error.value.kind == "missing"


def test_a_stopped_haproxy_leaves_its_socket_file_and_connections_are_refused(fresh):
    workers = fresh.worker_pids()
    fresh.stop()
    assert not any(pid_alive(pid) for pid in workers | {min(fresh.known_pids)})
    assert fresh.admin_socket.exists()
    with pytest.raises(RuntimeApiError, match="connection refused: haproxy is not running") as error:
        fresh.runtime().servers_state()
    assert error.value.kind == "refused"


def test_a_stopped_haproxy_fails_within_the_timeout_over_tcp_too(fresh):
    fresh.stop()
    started = time.monotonic()
    with pytest.raises(RuntimeApiError) as error:
        RuntimeApi(fresh.tcp_address, timeout=1.0).info()
    assert error.value.kind == "refused" and time.monotonic() - started < 1.0


def test_a_sigstopped_haproxy_times_out_and_does_not_hang_the_caller(fresh):
    worker = fresh.runtime().process_identity().pid
    os.kill(worker, signal.SIGSTOP)
    try:
        fresh.wait_for(lambda: process_state(worker) == "T", "the worker to be stopped")  # SIGSTOP is asynchronous
        started = time.monotonic()
        with pytest.raises(RuntimeApiError) as error:
            fresh.runtime(timeout=0.5).servers_state()
        assert error.value.kind == "timeout"
        assert time.monotonic() - started < 1.5
    finally:
        os.kill(worker, signal.SIGCONT)
    assert len(fresh.runtime().servers_state()) == 2


# --------------------------------------------------------------------------------------------- reloads


def test_process_identity_changes_on_reload_and_on_restart_and_not_otherwise(fresh):
    api = fresh.runtime()
    first = api.process_identity()
    api.set_server_state("pretix", "app1", "drain")
    fresh.request("/")
    assert api.process_identity() == first  # commands and traffic do not change it
    reloaded = fresh.reload()
    assert reloaded != first and reloaded.pid != first.pid
    assert api.process_identity() == reloaded
    by_signal = fresh.reload(signal_master=True)  # SIGUSR2 to the master, what systemctl reload does
    assert by_signal not in (first, reloaded)
    master = fresh.pid
    restarted = fresh.restart()
    assert fresh.pid != master
    assert restarted not in (first, reloaded, by_signal)
    assert api.process_identity() == restarted


def test_a_reload_serves_every_request_meanwhile(fresh):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        stop = time.monotonic() + 60

        def traffic() -> list[int]:
            statuses = []
            while time.monotonic() < stop:
                statuses.append(fresh.request("/").status)
            return statuses

        running = pool.submit(traffic)
        fresh.wait_for(lambda: fresh.backends["app1"].requests, "traffic to flow")
        fresh.reload()
        fresh.reload()
        stop = time.monotonic()
        statuses = running.result(10)
    assert statuses and set(statuses) == {200}


def test_a_runtime_maint_is_forgotten_by_a_reload_without_the_state_file(fresh):
    fresh.runtime().set_server_state("pretix", "app1", "maint")
    fresh.reload()
    assert fresh.server_admin("pretix", "app1") == "ready"


def test_a_runtime_maint_and_drain_survive_a_reload_and_a_restart_when_the_state_file_was_saved_first(fresh):
    api = fresh.runtime()
    api.set_server_state("pretix", "app1", "maint")
    api.set_server_state("pretix", "app2", "drain")
    saved = fresh.save_state_file()
    assert fresh.state_file.read_text() == saved and saved.startswith("1\n# be_id be_name")
    fresh.reload()
    assert (fresh.server_admin("pretix", "app1"), fresh.server_admin("pretix", "app2")) == ("maint", "drain")
    fresh.restart()
    assert (fresh.server_admin("pretix", "app1"), fresh.server_admin("pretix", "app2")) == ("maint", "drain")
    api.set_server_state("pretix", "app1", "ready")  # and a later change is saved and kept the same way
    fresh.save_state_file()
    fresh.reload()
    assert fresh.server_admin("pretix", "app1") == "ready"


def test_a_stale_state_file_brings_back_the_old_state_so_it_must_be_rewritten_after_each_change(fresh):
    api = fresh.runtime()
    api.set_server_state("pretix", "app1", "maint")
    fresh.save_state_file()
    api.set_server_state("pretix", "app1", "ready")  # not saved
    fresh.reload()
    assert fresh.server_admin("pretix", "app1") == "maint"


# --------------------------------------------------------------------------------------------- retries (SPEC 5)


def test_a_refused_connection_is_retried_on_the_other_server(fresh):
    fresh.backends["app1"].kill()
    responses = [fresh.request(f"/order/{n}") for n in range(6)]
    assert [(r.status, r.text) for r in responses] == [(200, "app2")] * 6


def test_a_request_that_reached_a_server_is_never_retried_when_its_response_is_lost(fresh):
    # A pretix order POST may be committed although the client gets a 502: placing it again on the
    # other server would book twice. Two concurrent POSTs: round robin sends one to each server.
    fresh.backends["app1"].drop()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda n: fresh.request(f"/order/{n}", "POST", body=b"x"), range(2)))
    assert sorted(r.status for r in results) == [200, 502]
    dropped = fresh.backends["app1"].requests
    assert len(dropped) == 1  # it reached app1 (and may have been acted on) ...
    assert dropped[0] not in fresh.backends["app2"].requests  # ... and was not sent again


def test_a_request_whose_server_hangs_ends_in_a_gateway_timeout_and_is_not_retried():
    with HaproxyFixture(servers=2, server_timeout="500ms") as fixture:
        fixture.backends["app1"].hang()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda n: fixture.request(f"/order/{n}", "POST", body=b"x"), range(2)))
        assert sorted(r.status for r in results) == [200, 504]
        assert len(fixture.backends["app2"].requests) == 1
        fixture.backends["app1"].revive()  # the held request is answered now
        fixture.wait_for(lambda: len(fixture.backends["app1"].requests) == 1, "the held request")


# --------------------------------------------------------------------------------------------- agent-check


@pytest.fixture
def agent() -> Iterator[tuple[AgentCheckResponder, dict[str, str]]]:
    state = {"line": agent_answer(True, False)}
    responder = AgentCheckResponder("127.0.0.1:0", lambda: state["line"])
    responder.start()
    yield responder, state
    responder.stop()


def polled_again(responder: AgentCheckResponder, times: int) -> Callable[[], bool]:
    """A condition that holds once haproxy has polled the responder `times` more times from now."""
    target = responder.answered + times
    return lambda: responder.answered >= target


def agent_haproxy(responder: AgentCheckResponder, **options) -> HaproxyFixture:
    assert responder.address is not None
    return HaproxyFixture(servers=2, agent_ports={"app1": responder.address[1]}, agent_inter="200ms",
                          server_options={"app1": "weight 100", "app2": "weight 100"}, **options)


def test_haproxy_reads_the_agents_answers_down_with_reason_drain_and_up(agent):
    responder, state = agent
    with agent_haproxy(responder) as fixture:
        fixture.wait_for(lambda: fixture.stat_row("pretix", "app1").get("last_agt") == "via agent : up",
                         "haproxy to read the first answer")

        state["line"] = agent_answer(False, False, "web: connection refused")
        # How soon haproxy acts on it (a few agent-inter) is bench/haproxy.py's agent_check figure.
        fixture.wait_for(lambda: not fixture.server_state("pretix", "app1").up, "the agent's down")
        row = fixture.stat_row("pretix", "app1")
        assert row.status == "DOWN (agent)"
        assert row.get("last_agt") == "via agent : down (web: connection refused)"
        assert {fixture.request("/").text for _ in range(4)} == {"app2"}

        state["line"] = agent_answer(True, True, "drain by alice")
        fixture.wait_for(lambda: fixture.server_state("pretix", "app1").up, "up again")
        app1 = fixture.server_state("pretix", "app1")
        assert (app1.weight, app1.admin) == (0, "ready")  # drained by weight, the admin state untouched
        assert fixture.stat_row("pretix", "app1").get("last_agt") == "via agent : up (drain by alice)"
        assert {fixture.request("/").text for _ in range(4)} == {"app2"}

        state["line"] = agent_answer(True, False, None, 50)
        fixture.wait_for(lambda: fixture.server_state("pretix", "app1").weight == 50, "weight 50%")
        state["line"] = agent_answer(True, False)
        fixture.wait_for(lambda: fixture.server_state("pretix", "app1").weight == 100, "weight back to 100%")
        assert fixture.stat_row("pretix", "app1").status == "no check"
        assert {fixture.request("/").text for _ in range(4)} == {"app1", "app2"}


def test_the_agents_answers_never_undo_a_runtime_maint_but_haproxys_ready_word_would(agent):
    responder, state = agent
    with agent_haproxy(responder) as fixture:
        api = fixture.runtime()
        api.set_server_state("pretix", "app1", "maint")
        for line in (agent_answer(True, False), agent_answer(True, True), agent_answer(False, False, "x")):
            state["line"] = line
            fixture.wait_for(polled_again(responder, 3), "three more agent polls")
            assert fixture.server_admin("pretix", "app1") == "maint", line
        # Why the responder avoids the admin words: "ready" clears a maint set on the socket.
        state["line"] = "up ready\n"
        fixture.wait_for(lambda: fixture.server_admin("pretix", "app1") == "ready", "haproxy to obey 'ready'")


def test_haproxys_own_http_check_still_takes_a_dead_server_out_while_the_agent_says_up(agent):
    responder, _ = agent
    with agent_haproxy(responder, http_check=True, check_inter="200ms") as fixture:
        fixture.wait_for(lambda: fixture.stat_row("pretix", "app1").status == "UP", "app1 checked UP")
        fixture.backends["app1"].kill()
        fixture.wait_for(lambda: fixture.stat_row("pretix", "app1").status == "DOWN", "the HTTP check's DOWN")
        assert fixture.stat_row("pretix", "app1").get("last_agt") == "via agent : up"
        fixture.backends["app1"].revive()
        fixture.wait_for(lambda: fixture.stat_row("pretix", "app1").status == "UP", "UP again")


def test_the_http_check_sends_the_host_header_to_healthcheck():
    with HaproxyFixture(servers=1, http_check=True, check_inter="200ms") as fixture:
        fixture.wait_for(lambda: fixture.stat_row("pretix", "app1").status == "UP", "app1 checked UP")
        assert ("GET", "/healthcheck/") in fixture.backends["app1"].requests


# --------------------------------------------------------------------------------------------- the example config


def example_config_in(tmp_path: Path) -> Path:
    """The shipped haproxy.cfg with what only exists on a real load balancer swapped for temp files."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    pem = tmp_path / "cert.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "crt.pem"), "-days", "1", "-subj", "/CN=tickets.example.org"],
                   check=True, capture_output=True, timeout=60)
    pem.write_bytes((tmp_path / "crt.pem").read_bytes() + (tmp_path / "key.pem").read_bytes())
    state = tmp_path / "haproxy-server-state"
    state.write_text("1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
                     "srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health "
                     "srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord "
                     "srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n")
    text = EXAMPLE_CONFIG.read_text()
    replacements = {
        "group pretix-agent": "group root",  # the package creates the group; this host may not have it
        "/etc/haproxy/certs/tickets.example.org.pem": str(pem),
        "/var/lib/pretix-agent/haproxy-server-state": str(state),
    }
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    return path


def test_the_example_haproxy_config_is_valid_without_a_single_warning(tmp_path):
    # -V: haproxy 3.0 says "Configuration file is valid" only when verbose (2.6 always did).
    checked = subprocess.run([HAPROXY, "-c", "-V", "-f", str(example_config_in(tmp_path))], capture_output=True,
                             text=True, timeout=30)
    output = checked.stdout + checked.stderr
    assert checked.returncode == 0, output
    assert "Configuration file is valid" in output
    assert "WARNING" not in output and "Warnings were found" not in output, output


def test_the_example_haproxy_config_retries_only_failed_connections():
    lines = [line.split("#")[0].split() for line in EXAMPLE_CONFIG.read_text().splitlines()]
    retry_on = [words for words in lines if words[:1] == ["retry-on"]]
    assert retry_on == [["retry-on", "conn-failure"]]
    assert ["option", "redispatch", "1"] in lines and ["retries", "2"] in lines
    assert ["load-server-state-from-file", "global"] in lines
    text = EXAMPLE_CONFIG.read_text()
    assert re.search(r"stats socket \S+ mode 660 level admin", text)
    assert "agent-check agent-port 8999" in text and "weight 100" in text


def test_the_example_haproxy_config_sends_replica_reads_to_the_primary_only_as_backup():
    text = EXAMPLE_CONFIG.read_text()
    section = text.split("listen pretix_replica\n", 1)[1]
    lines = [line.split("#")[0].split() for line in section.splitlines()]
    servers = [words for words in lines if words[:1] == ["server"]]
    assert [(words[1], "backup" in words) for words in servers] == [("replica", False), ("primary", True)]
    assert "on-marked-down shutdown-sessions" in section
    defaults = text.rsplit("defaults\n", 1)[1].split("listen pretix_replica", 1)[0]
    assert "mode tcp" in defaults and "timeout client 30m" in defaults


def test_shutdown_sessions_answers_nothing_on_success_and_refuses_an_unknown_server(fresh):
    api = fresh.runtime()
    assert api.run_silent(["shutdown sessions server pretix/app1"]) == [None]
    with pytest.raises(RuntimeApiError) as refused:
        api.shutdown_sessions("pretix", "nosuch")
    assert refused.value.kind == "unknown_server"


def test_many_server_states_are_set_in_one_exchange_with_a_result_each(fresh):
    api = fresh.runtime()
    results = api.set_server_states([("pretix", "app1", "maint"), ("pretix", "nosuch", "drain"),
                                     ("pretix", "app2", "drain")])
    assert results[0] is None and results[2] is None
    assert results[1] is not None and results[1].kind == "unknown_server"
    assert (fresh.server_admin("pretix", "app1"), fresh.server_admin("pretix", "app2")) == ("maint", "drain")
    assert api.set_server_states([]) == []
