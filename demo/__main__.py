"""Run pretix-agent in the foreground with a real nginx (the shipped snippet) in front of a stub
pretix, all on 127.0.0.1 in a temporary directory, and tell the user what to try.

Ctrl-C stops everything and removes the directory.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pretix_agent import cli
from tests.integration.nginx_fixture import NginxServer, StubUpstream, make_world_readable_tempdir
from tests.integration.pg_fixture import PgReplicationCluster
from tests.integration.redis_fixture import RedisReplicationPair

REPO = Path(__file__).resolve().parents[1]
DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


def weekly(moment: datetime) -> str:
    return f"{DAYS[moment.weekday()]} {moment:%H:%M}"


def main() -> int:
    print("starting PostgreSQL (primary + streaming replica), Redis, nginx and a stub pretix ...")
    with PgReplicationCluster() as postgres, RedisReplicationPair() as redis:
        return run(postgres, redis)


def run(postgres: PgReplicationCluster, redis: RedisReplicationPair) -> int:
    root = make_world_readable_tempdir("pretix-agent-demo-")
    state = root / "state"
    state.mkdir(mode=0o755)
    # A window that opens in about three minutes and lasts two, so the demo shows the schedule at work.
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    window_start, window_end = now + timedelta(minutes=3), now + timedelta(minutes=5)
    config = root / "agent.toml"
    config.write_text(textwrap.dedent(f"""\
        [agent]
        node = "demo"
        status_file = "{root}/status.json"
        state_dir = "{state}"

        [log]
        format = "console"

        [maintenance]
        marker = "{state}/maintenance"
        lock = "{state}/maintenance.lock"
        timezone = "UTC"

        [[maintenance.window]]
        start = "{weekly(window_start)}"
        end = "{weekly(window_end)}"
        """))
    upstream = StubUpstream().start()
    with config.open("a") as out:
        out.write(textwrap.dedent(f"""
            [checks.database]
            type = "postgres"
            dsn = "{postgres.dsn(server='replica')}"
            role = "standby"
            max_lag_bytes = "1MiB"
            max_lag_seconds = "10s"

            [checks.redis]
            type = "redis"
            url = "{redis.url()}"
            queues = ["default", "checkout", "mail", "background", "notifications"]

            [checks.redis-replica]
            type = "redis"
            url = "{redis.replica_url()}"
            write_probe = false

            [checks.pretix]
            type = "http"
            url = "http://127.0.0.1:{upstream.port}/healthcheck/"
            host = "tickets.example.org"
            """))
    ctl = root / "pretix-agentctl"
    ctl.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m pretix_agent.ctl -c {config} \"$@\"\n")
    ctl.chmod(0o755)
    nginx = NginxServer(upstream.port, marker_path=state / "maintenance", workdir=root)
    nginx.start()
    url = f"http://127.0.0.1:{nginx.port}"
    print(textwrap.dedent(f"""
        pretix-agent demo: nginx with the maintenance snippet on {url} in front of a stub pretix.
        Everything lives in {root}; Ctrl-C stops it all.

        In another terminal, try:
          curl -si {url}/myorg/conf/ | head -1          # 200: the shop is open
          {ctl} lock --reason "trying the demo"
          curl -si {url}/myorg/conf/ | head -5          # 503, Retry-After, the maintenance page
          curl -si {url}/control/ | head -1             # 200: the admin stays reachable
          {ctl} status
          rm {state}/maintenance                        # the agent puts it back and says why
          {ctl} unlock                                  # the shop opens again
          touch {state}/maintenance                     # a hand-made marker is adopted as a lock
          {ctl} unlock

        Health checks run against a real PostgreSQL standby, Redis master and replica, and the stub's
        /healthcheck/. Break them and watch `{ctl} status` and the log:
          psql "{postgres.superuser_dsn(server='replica')}" -c 'select pg_wal_replay_pause()'
          psql "{postgres.superuser_dsn(server='primary')}" \\
               -c 'create table if not exists demo as select 1 x; insert into demo select generate_series(1, 200000)'
          psql "{postgres.superuser_dsn(server='replica')}" -c 'select pg_wal_replay_resume()'
          kill -STOP {redis.master.pid}; sleep 5; kill -CONT {redis.master.pid}   # a hung Redis: timeouts, no stall

        A weekly window opens at {window_start:%H:%M} UTC and closes at {window_end:%H:%M} UTC
        ({weekly(window_start)} to {weekly(window_end)}): watch the agent turn maintenance on and off by itself,
        and try `unlock` inside it (the marker stays until the window ends).
        """))
    try:
        return cli.main(["-c", str(config)])
    finally:
        nginx.process.stop()
        upstream.stop()
        shutil.rmtree(root, ignore_errors=True)
        print("\ndemo stopped; removed", root)


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
