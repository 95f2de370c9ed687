"""Which probe a check runs: `make_probe(spec)` picks it by the check's `type`.

The probe modules import their client library (psycopg, redis) only when a probe runs, so
`--check-config` and a node without such checks need neither library. A missing library is
reported when the probe is made, naming the package to install.
"""

from __future__ import annotations

import functools
import socket

from ..config import CheckSpec, HttpCheck, PostgresCheck, RedisCheck
from . import celery, http, postgres, redis
from .model import Probe


def make_probe(spec: CheckSpec) -> Probe:
    """Given a check's spec, return its probe: a function of a Deadline returning a ProbeResult.

    Raise ImportError (naming the package to install) if the check's client library is missing,
    ValueError for a type this version does not know.
    """
    options = spec.options
    if spec.type == "postgres" and isinstance(options, PostgresCheck):
        postgres.require()
        return functools.partial(postgres.probe, options)
    if spec.type == "redis" and isinstance(options, RedisCheck):
        redis.require()
        # The memory of the queues' oldest tasks lives as long as the probe: one per check.
        return functools.partial(redis.probe, options, probe_key=redis_probe_key(spec.name),
                                 queue_memory=celery.QueueMemoryCell())
    if spec.type == "http" and isinstance(options, HttpCheck):
        return functools.partial(http.probe, options)
    raise ValueError(f"no probe for a check of type {spec.type!r} with {type(options).__name__} options")


def redis_probe_key(check_name: str, node: str | None = None) -> str:
    """The key the Redis write probe sets: one per node and check, so agents never share one."""
    return f"{redis.PROBE_KEY_PREFIX}{node or socket.gethostname()}:{check_name}"
