"""Which probe a check runs: `make_probe(spec)` picks it by the check's `type`.

Each probe is an object that keeps its connection between probes (checks/keeper.py) and is closed
by its runner when the check stops. The probe modules import their client library (psycopg,
redis) only when a probe is made, so `--check-config` and a node without such checks need neither
library. A missing library is reported when the probe is made, naming the package to install.
"""

from __future__ import annotations

import socket

from ..config import CheckSpec, HttpCheck, PostgresCheck, RedisCheck
from . import http, postgres, redis
from .model import ConnectedProbe


def make_probe(spec: CheckSpec) -> ConnectedProbe:
    """Given a check's spec, return its probe: called with a Deadline, it returns a ProbeResult;
    `close()` closes the connection it keeps (checks/model.py, ConnectedProbe).

    Raise ImportError (naming the package to install) if the check's client library is missing,
    ValueError for a type this version does not know.
    """
    options = spec.options
    if spec.type == "postgres" and isinstance(options, PostgresCheck):
        postgres.require()
        return postgres.PostgresProbe(options, check_name=spec.name)
    if spec.type == "redis" and isinstance(options, RedisCheck):
        redis.require()
        return redis.RedisProbe(options, probe_key=redis_probe_key(spec.name), check_name=spec.name)
    if spec.type == "http" and isinstance(options, HttpCheck):
        return http.HttpProbe(options)
    raise ValueError(f"no probe for a check of type {spec.type!r} with {type(options).__name__} options")


def redis_probe_key(check_name: str, node: str | None = None) -> str:
    """The key the Redis write probe sets: one per node and check, so agents never share one."""
    return f"{redis.PROBE_KEY_PREFIX}{node or socket.gethostname()}:{check_name}"
