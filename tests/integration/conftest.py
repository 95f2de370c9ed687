import pytest

from .agent_fixture import Agent, write_config


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
