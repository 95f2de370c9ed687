"""The whole maintenance path: pretix-agentctl -> the daemon -> the marker -> a real nginx's 503."""

import shutil

import pytest

from tests.waiting import wait_until

from .agent_fixture import Agent, ctl, write_config
from .nginx_fixture import NginxServer, StubUpstream, make_world_readable_tempdir, nginx_available

pytestmark = [pytest.mark.integration, pytest.mark.skipif(not nginx_available(), reason="nginx not installed")]


def test_lock_closes_the_shop_behind_nginx_and_unlock_opens_it():
    root = make_world_readable_tempdir("agent-nginx-")
    (root / "state").mkdir(mode=0o755)
    (root / "state").chmod(0o755)
    agent = Agent(root, write_config(root))
    with StubUpstream() as upstream:
        nginx = NginxServer(upstream.port, marker_path=root / "state" / "maintenance", workdir=root).start()
        try:
            agent.wait_ready()
            assert nginx.request("GET", "/org/event/").status == 200
            assert ctl(agent.config, "lock", "--reason", "test").returncode == 0
            closed = nginx.request("GET", "/org/event/")
            assert closed.status == 503 and closed.header("Retry-After")
            assert nginx.request("GET", "/control/").status == 200
            (root / "state" / "maintenance").unlink()  # by hand: the agent restores it
            wait_until(lambda: nginx.request("GET", "/org/event/").status == 503, message="503 again")
            assert ctl(agent.config, "unlock").returncode == 0
            assert nginx.request("GET", "/org/event/").status == 200
        finally:
            nginx.process.stop()
            agent.stop()
            shutil.rmtree(root, ignore_errors=True)
