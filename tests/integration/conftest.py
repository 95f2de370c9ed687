import pytest

from tests.ports import PortInUse, address_in_use, start_with_ports

from .agent_fixture import Agent, AgentExited, write_config


@pytest.fixture
def agent_factory(tmp_path):
    started = []

    def start(config_text: str = "", windows: str = "", timezone: str = "UTC", watchdog_usec=None, env=None,
              wait_ready: bool = True):
        config = write_config(tmp_path, config_text, windows, timezone)
        agent = Agent(tmp_path, config, watchdog_usec=watchdog_usec, env=env)
        started.append(agent)
        if wait_ready:
            agent.wait_ready()
        return agent

    yield start
    for agent in started:
        agent.stop()


@pytest.fixture
def agent_with_port(agent_factory):
    """Start the daemon with a configuration that makes it listen on a TCP port (the agent-check):
    `agent, port = agent_with_port(lambda port: config_text, env=...)`. The port is a candidate
    outside the ephemeral range; if the daemon exits because it is in use, it starts again on a
    fresh one."""

    def start(config, **kwargs):
        def attempt(port: int):
            agent = agent_factory(config(port), wait_ready=False, **kwargs)
            try:
                agent.wait_ready()
            except AgentExited:
                if not address_in_use(agent.log()):
                    raise
                agent.stop()
                raise PortInUse(f"the agent could not listen on port {port}") from None
            return agent, port

        return start_with_ports(attempt, what="the agent's agent-check listener")

    return start
