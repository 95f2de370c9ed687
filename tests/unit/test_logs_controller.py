"""Logging and Loki in the transaction: nothing is switched before commit, nothing at all on discard."""

from __future__ import annotations

import pytest

from pretix_agent import config as config_module
from pretix_agent.controller import Services
from pretix_agent.loki import controller as logs_module
from pretix_agent.loki.controller import LogsController


class FakeShipper:
    made: list[FakeShipper] = []

    def __init__(self, section, node, state_dir, source):
        self.section, self.started, self.stopped, self.credentials_read = section, False, False, 0
        self.heartbeat = None
        FakeShipper.made.append(self)

    def start(self):
        self.started = True

    def stop(self, flush_timeout):
        self.stopped = True
        return True

    def alive(self):
        return self.started and not self.stopped

    def reload_credentials(self):
        self.credentials_read += 1

    def request_flush(self):
        pass


@pytest.fixture
def made(monkeypatch, tmp_path):
    FakeShipper.made = []
    configured = []
    monkeypatch.setattr(logs_module, "LokiShipper", FakeShipper)
    monkeypatch.setattr(logs_module.logs, "configure", lambda level, fmt, tee=None: configured.append((level, fmt)))
    controller = LogsController(Services(lambda reason: None, lambda event: None))
    base = f'[agent]\nstate_dir = "{tmp_path}"\n[log]\nlevel = "debug"\n[loki]\nurl = "http://loki.example:3100"\n'
    controller.prepare(config_module.parse(base)).commit()
    return controller, configured, base


def test_commit_sets_the_level_and_starts_the_shipper(made):
    _controller, configured, _base = made
    assert configured == [("debug", "auto")]
    assert FakeShipper.made[0].started


def test_a_discarded_change_leaves_the_level_and_the_loki_target_as_they_were(made):
    controller, configured, base = made
    changed = base.replace('"debug"', '"error"').replace("loki.example", "elsewhere.example")
    controller.prepare(config_module.parse(changed)).discard()
    assert configured == [("debug", "auto")]
    assert controller.shipper is FakeShipper.made[0] and not FakeShipper.made[0].stopped
    assert not FakeShipper.made[-1].started


def test_a_committed_new_target_replaces_the_shipper_and_the_same_target_only_rereads_credentials(made):
    controller, configured, base = made
    controller.prepare(config_module.parse(base.replace('"debug"', '"info"'))).commit()
    assert configured[-1] == ("info", "auto") and FakeShipper.made[0].credentials_read == 1
    controller.prepare(config_module.parse(base.replace("loki.example", "elsewhere.example"))).commit()
    assert FakeShipper.made[0].stopped and FakeShipper.made[-1].started
    assert FakeShipper.made[-1].section.url == "http://elsewhere.example:3100"
