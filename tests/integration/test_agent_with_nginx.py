"""The whole maintenance path: pretix-agentctl (or a failing shared dependency) -> the daemon -> the marker
-> a real nginx's 503."""

import shutil

import pytest

from tests.waiting import wait_until

from .agent_fixture import Agent, ctl, write_config
from .nginx_fixture import NginxServer, StubUpstream, make_world_readable_tempdir, nginx_available
from .redis_fixture import RedisReplicationPair, redis_unavailable_reason

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


@pytest.mark.skipif(redis_unavailable_reason() is not None, reason=str(redis_unavailable_reason()))
def test_a_failing_shared_dependency_closes_the_shop_with_its_own_cause_until_it_passes_again():
    root = make_world_readable_tempdir("agent-nginx-")
    (root / "state").mkdir(mode=0o755)
    (root / "state").chmod(0o755)
    with RedisReplicationPair(with_replica=False) as redis, StubUpstream() as upstream:
        # write_config's `windows` text goes into its [maintenance] table
        agent = Agent(root, write_config(root, f"""
[checks.redis]
type = "redis"
url = "{redis.url()}"
interval = "300ms"
timeout = "250ms"
""", windows='on_failing = ["redis"]'))
        nginx = NginxServer(upstream.port, marker_path=root / "state" / "maintenance", workdir=root).start()
        try:
            agent.wait_ready()
            wait_until(lambda: agent.status()["checks"]["redis"]["state"] == "passing", message="redis passing")
            assert nginx.request("GET", "/org/event/").status == 200
            redis.master.kill()
            wait_until(lambda: nginx.request("GET", "/org/event/").status == 503, message="the shop closed")
            closed = nginx.request("GET", "/org/event/")
            assert closed.header("Retry-After") and nginx.request("GET", "/control/").status == 200
            assert not agent.lock.exists()
            # nginx reads the marker, written as the cycle decides; the status file follows at the end
            # of that cycle, so it may lag the 503 by a moment
            wait_until(lambda: (agent.status()["maintenance"]["on"], agent.status()["maintenance"]["cause"])
                       == (True, "check:redis"), message=lambda: f"status shows check:redis: {agent.status()}")
            shown = ctl(agent.config, "status")
            assert "maintenance: ON: check redis failing ([maintenance] on_failing); ends by itself when it passes " \
                   "again" in shown.stdout, shown.stdout
            assert "maintenance.enabled" in agent.log() and "cause=check:redis" in agent.log()
            redis.master.start()
            wait_until(lambda: nginx.request("GET", "/org/event/").status == 200, message="the shop open again")
            assert not agent.marker.exists() and not agent.lock.exists()
            wait_until(lambda: "maintenance.disabled" in agent.log(), message="the end logged")
        finally:
            nginx.process.stop()
            agent.stop()
            shutil.rmtree(root, ignore_errors=True)
