"""Every capability the daemon runs, in the order a cycle runs them: each reads what the ones
before it found (Facts). Adding a capability means adding its controller here, and nowhere else."""

from __future__ import annotations

from typing import Any

from .adapters.dbus import SharedConnection
from .agent_check.controller import AgentCheckController
from .checks.controller import ChecksController
from .cluster.controller import ClusterController
from .config import Config
from .controller import Controller, Services
from .drain.controller import DrainController
from .errors import ConfigProblem
from .fencing.controller import FencingController
from .haproxy.controller import HaproxyControl
from .loki.controller import LogsController
from .maintenance.controller import MaintenanceController
from .metrics.controller import MetricsController

CONTROLLER_TYPES = (ChecksController, DrainController, ClusterController, MaintenanceController, HaproxyControl,
                    AgentCheckController, FencingController, MetricsController, LogsController)


def preflight(config: Config) -> list[ConfigProblem]:
    """What start (or a reload) would refuse in `config`, found without opening anything: the same
    checks every controller's prepare makes first, so `--check-config` and start never disagree."""
    return [problem for kind in CONTROLLER_TYPES for problem in kind.check(config)]


def build_controllers(services: Services, bus: SharedConnection, clock_offset: float) -> list[Controller[Any, Any]]:
    """Every capability, in the order a cycle runs them: each reads what the ones before found. The
    last (logs) is also stopped last, after the final status, so the stop's own events are shipped, and
    metrics come just before it, after every controller that decides, so they show this cycle. The
    cluster runs before maintenance, so a mirrored cluster lock is acted on in the same cycle; it
    publishes the maintenance and haproxy sections of the last cycle as this node's row."""
    maintenance, haproxy = MaintenanceController(services, clock_offset), HaproxyControl(services)
    cluster = ClusterController(services, clock_offset, maintenance.status, haproxy.status)
    return [ChecksController(services, bus), DrainController(services, bus), cluster, maintenance, haproxy,
            AgentCheckController(services), FencingController(services), MetricsController(services),
            LogsController(services)]
