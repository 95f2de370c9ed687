"""A pretix cluster of agents sharing one PostgreSQL (primary + streaming replica). Plain classes, no pytest.

    with ClusterRig(tmp_path, nodes=3, netns=True) as rig:       # real daemons, real PostgreSQL
        rig.ctl(0, "lock", "--cluster")                           # pretix-agentctl on app1
        rig.link_down(1); rig.link_up(1)                          # app2's network link
        rig.pg.primary.stop(); rig.pg.replica.execute("SELECT pg_promote()")

With `netns=True` (root) PostgreSQL runs in a network namespace of its own and every agent in one
of its own, joined by veth pairs to a bridge in PostgreSQL's namespace (10.213.x.y: these
addresses exist only inside the namespaces). The primary and the replica listen on 10.213.x.1
and 10.213.x.2, and every agent's DSN lists both with target_session_attrs=read-write, as an
operator's would. With `netns=False` (the benchmark) everything runs on loopback.

The database side is set up with the SQL the README and `pretix-agentctl cluster init --print`
give a DBA (schema.ROLE_SETUP), and the agents authenticate with a password from a passfile.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path
from typing import Any

import psycopg

from pretix_agent.cluster import schema
from tests.waiting import wait_until

from .agent_fixture import Agent, ctl, write_config
from .netns_fixture import Namespace, Network
from .pg_fixture import PgReplicationCluster

ROLE, PASSWORD, DATABASE = "pretix_agent", "cluster-test-password", "pretix_agent"


def set_up_database(pg: PgReplicationCluster) -> None:
    """Run the DBA's set-up of the README (schema.ROLE_SETUP) as the superuser, on the primary."""
    text = schema.ROLE_SETUP.replace("'choose-one'", f"'{PASSWORD}'")
    before, after = text.split("\\connect pretix_agent")
    for dbname, part in (("postgres", before), (DATABASE, after)):
        sql = "\n".join(line for line in part.splitlines() if not line.startswith("--"))
        with psycopg.connect(pg.primary.superuser_dsn(dbname=dbname), autocommit=True) as connection:
            for statement in sql.split(";"):
                if statement.strip():
                    connection.execute(statement)


class ClusterRig:
    def __init__(self, directory: Path, nodes: int = 3, netns: bool = True, heartbeat: str = "2s",
                 timeout: str = "1s", listen: bool = True, windows: dict[int, str] | None = None,
                 env: dict[int, dict[str, str]] | None = None):
        self.directory = directory
        self.count = nodes
        self.use_netns = netns
        self.heartbeat, self.timeout, self.listen = heartbeat, timeout, listen
        self.windows = windows or {}
        self.env = env or {}
        self.net: Network | None = None
        self.hub: Namespace | None = None
        self.namespaces: list[Namespace | None] = [None] * nodes
        self.pg: PgReplicationCluster | None = None
        self.agents: list[Agent | None] = [None] * nodes
        self.configs: list[Path] = []
        self.names = [f"app{index + 1}" for index in range(nodes)]

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> ClusterRig:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> ClusterRig:
        if self.use_netns:
            self.net = Network()
            self.hub = self.net.hub("pg", ["10.213.0.1/16", "10.213.0.2/16"])
            for index in range(self.count):
                self.namespaces[index] = self.net.node(self.names[index], f"10.213.1.{11 + index}/16")
            listen = "*"
        else:
            listen = "127.0.0.1"
        self.pg = self._in_hub(lambda: PgReplicationCluster(listen_addresses=listen).start())
        set_up_database(self.pg)
        for server in self.pg.servers:
            with open(server.datadir / "pg_hba.conf", "a") as hba:
                hba.write(f"host all {ROLE} 10.213.0.0/16 scram-sha-256\n")
            server.execute("SELECT pg_reload_conf()")
        passfile = self.directory / "cluster.pgpass"
        passfile.write_text(f"*:*:*:{ROLE}:{PASSWORD}\n")
        passfile.chmod(0o600)
        primary, replica = self.pg.primary, self.pg.replica
        assert replica is not None
        hosts = "10.213.0.1,10.213.0.2" if self.use_netns else "127.0.0.1,127.0.0.1"
        dsn = (f"host={hosts} port={primary.port},{replica.port} dbname={DATABASE} user={ROLE} "
               "target_session_attrs=read-write")
        for index, name in enumerate(self.names):
            directory = self.directory / name
            directory.mkdir()
            config = write_config(directory, f"""
[cluster]
dsn = "{dsn}"
passfile = "{passfile}"
heartbeat_interval = "{self.heartbeat}"
timeout = "{self.timeout}"
listen = {"true" if self.listen else "false"}
roles = ["app"]
""", windows=self.windows.get(index, ""))
            config.write_text(config.read_text().replace('node = "test-node"', f'node = "{name}"'))
            self.configs.append(config)
        for index in range(self.count):
            self.start_agent(index, wait=False)
        for agent in self.agents:
            assert agent is not None
            agent.wait_ready(timeout=30)
        result = self.ctl(0, "cluster", "init", "--timeout", "20s")
        assert result.returncode == 0, result.stdout + result.stderr
        self.wait_all(lambda c: c["state"] == "connected" and len(c["nodes"]) == self.count, timeout=30,
                      what="every node sees every node")
        return self

    def _in_hub(self, function: Any) -> Any:
        return self.hub.call(function) if self.hub is not None else function()

    def start_agent(self, index: int, wait: bool = True) -> Agent:
        directory, config = self.directory / self.names[index], self.configs[index]
        env = self.env.get(index)
        namespace = self.namespaces[index]
        agent = namespace.call(lambda: Agent(directory, config, env=env)) if namespace else Agent(directory, config,
                                                                                                  env=env)
        self.agents[index] = agent
        if wait:
            agent.wait_ready(timeout=30)
        return agent

    def stop_agent(self, index: int) -> None:
        agent = self.agents[index]
        if agent is not None:
            agent.stop()
            self.agents[index] = None

    def close(self) -> None:
        for index in range(self.count):
            with contextlib.suppress(Exception):
                self.stop_agent(index)
        if self.pg is not None:
            self.pg.close()
        if self.net is not None:
            self.net.close()

    # -- acting and looking ----------------------------------------------------------------------

    def agent(self, index: int) -> Agent:
        agent = self.agents[index]
        assert agent is not None
        return agent

    def ctl(self, index: int, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return ctl(self.configs[index], *args, timeout=timeout)

    def marker(self, index: int) -> Path:
        return self.directory / self.names[index] / "state" / "maintenance"

    def lock_file(self, index: int) -> Path:
        return self.directory / self.names[index] / "state" / "maintenance.lock"

    def cluster_status(self, index: int) -> dict[str, Any] | None:
        try:
            document = json.loads((self.directory / self.names[index] / "status.json").read_text())
        except (OSError, ValueError):
            return None
        return document.get("cluster")

    def wait_all(self, predicate: Any, timeout: float, what: str, nodes: list[int] | None = None) -> None:
        for index in nodes if nodes is not None else range(self.count):
            wait_until(lambda i=index: (c := self.cluster_status(i)) is not None and predicate(c), timeout,
                       message=lambda i=index: f"{what} on {self.names[i]}: {self.cluster_status(i)}; log:\n"
                       f"{self.agent(i).log()[-3000:] if self.agents[i] else ''}")

    def link_down(self, index: int) -> None:
        namespace = self.namespaces[index]
        assert self.net is not None and namespace is not None
        self.net.link_down(namespace)

    def link_up(self, index: int) -> None:
        namespace = self.namespaces[index]
        assert self.net is not None and namespace is not None
        self.net.link_up(namespace)


def environment_ready() -> str | None:
    """Why the cluster rig cannot run here, or None."""
    from .netns_fixture import netns_unavailable_reason
    from .pg_fixture import pg_unavailable_reason

    return pg_unavailable_reason() or netns_unavailable_reason()
