"""What this node publishes about itself: derived from its configuration and its last cycle (pure)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from .. import __version__, status
from ..checks.health import CheckState
from ..config import Config
from ..maintenance.decide import CLUSTER_ORIGIN, LockInfo
from .model import APP, DATABASE, LOAD_BALANCER, NodeState

_PRETIX_UNITS = ("pretix-web", "pretix-worker")
_LOCAL_HOSTS = ("", "localhost", "127.0.0.1", "::1")


def _local_server(dsn: str) -> bool:
    """Whether a postgres check's DSN points at this host (a Unix socket or loopback)."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(dsn)
    except Exception:  # psycopg missing, or a DSN libpq refuses: then it is no evidence either way
        return False
    hosts = str(params.get("host") or params.get("hostaddr") or "").split(",")
    return all(host.startswith("/") or host in _LOCAL_HOSTS for host in hosts)


def roles(config: Config) -> tuple[str, ...]:
    """This node's roles: `[cluster] roles` if set, else what the configuration shows it runs."""
    if config.cluster is not None and config.cluster.roles:
        return config.cluster.roles
    found = []
    units = [unit for check in config.checks if check.type == "systemd" for unit in getattr(check.options, "units", ())]
    if config.agent_check is not None or any(check.type == "http" for check in config.checks) or any(
            unit.startswith(_PRETIX_UNITS) for unit in units):
        found.append(APP)
    if config.haproxy is not None:
        found.append(LOAD_BALANCER)
    if any(check.type == "postgres" and _local_server(getattr(check.options, "dsn", "")) for check in config.checks):
        found.append(DATABASE)
    return tuple(found)


def windows(config: Config) -> tuple[str, ...]:
    return tuple(f"{window.start} - {window.end}" for window in config.maintenance.windows)


def windows_digest(windows: tuple[str, ...], timezone: str) -> str:
    """A short digest of the windows and their time zone: equal exactly when both are."""
    canonical = json.dumps({"timezone": timezone, "windows": sorted(windows)}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def haproxy_actions(section: status.Haproxy | None) -> tuple[str, ...]:
    """The servers this node's agent keeps out of rotation, and those its guard holds in."""
    if section is None:
        return ()
    out = [f"{s.backend}/{s.server}: {s.desired} ({s.why})" for s in section.servers if s.desired != "ready"]
    out += [f"{held}: held in (min_ready)" for held in section.held]
    return tuple(out)


def node_state(config: Config, maintenance: status.Maintenance | None, haproxy: status.Haproxy | None,
               checks: Mapping[str, CheckState], lock_file: LockInfo, dismissed: str | None,
               started_at: float) -> NodeState:
    """Given the configuration, the maintenance and haproxy sections of the last cycle, this cycle's
    check states and lock file, return this node's row."""
    assert config.cluster is not None
    shown = windows(config)
    zone = config.maintenance.timezone.key
    if not lock_file.present:
        locked = None
    else:
        locked = "cluster" if lock_file.origin == CLUSTER_ORIGIN else "local"
    return NodeState(
        node=config.agent.node, roles=roles(config), version=__version__,
        heartbeat_interval=config.cluster.heartbeat_interval,
        maintenance=maintenance.on if maintenance is not None else None,
        cause=maintenance.cause if maintenance is not None else None,
        locked=locked, cluster_lock_id=lock_file.lock_id if locked == "cluster" else None, dismissed=dismissed,
        failing_checks=tuple(sorted(name for name, check in checks.items() if check.state == "failing")),
        haproxy=haproxy_actions(haproxy), windows=shown, timezone=zone, windows_digest=windows_digest(shown, zone),
        started_at=started_at)
