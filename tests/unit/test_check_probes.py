"""make_probe: from a check's spec to the probe of its type."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pretix_agent import config
from pretix_agent.checks import celery, http, postgres, probes, redis


def spec(text: str) -> config.CheckSpec:
    (check,) = config.parse(text).checks
    return check


def test_each_type_gets_its_probe_with_its_options_keeping_its_connection():
    pg = spec('[checks.db]\ntype = "postgres"\ndsn = "host=db2 user=pretix_agent"\nrole = "standby"\n')
    probe = probes.make_probe(pg)
    assert isinstance(probe, postgres.PostgresProbe)
    assert probe.options is pg.options and probe.server.keep
    web = spec('[checks.web]\ntype = "http"\nurl = "http://127.0.0.1:8345/healthcheck/"\n')
    web_probe = probes.make_probe(web)
    assert isinstance(web_probe, http.HttpProbe) and web_probe.options is web.options
    assert web_probe.keeper is not None and web_probe.keeper.keep
    for made in (probe, web_probe):
        made.close()  # nothing was opened: closing is harmless


def test_redis_probe_writes_a_key_of_its_own_per_node_and_check_and_names_its_connection():
    cache = spec('[checks.cache]\ntype = "redis"\nurl = "redis://127.0.0.1:6379/0"\n')
    probe = probes.make_probe(cache)
    assert isinstance(probe, redis.RedisProbe) and probe.keeper.keep
    assert probe.probe_key == probes.redis_probe_key("cache")
    assert probes.redis_probe_key("cache", node="app1") == "pretix-agent:probe:app1:cache"
    assert redis.client_name_for("cache") == "pretix-agent:check:cache"
    assert redis.client_name_for("my cache\n") == "pretix-agent:check:my_cache_"  # no spaces in a Redis name


def test_each_redis_check_remembers_its_queues_oldest_tasks_apart_from_every_other():
    text = '[checks.a]\ntype = "redis"\nurl = "redis://127.0.0.1:6379/0"\n'
    first, second = probes.make_probe(spec(text)), probes.make_probe(spec(text))
    assert isinstance(first.queue_memory, celery.QueueMemoryCell)
    assert first.queue_memory is not second.queue_memory


def test_an_unknown_type_is_refused():
    odd = config.CheckSpec(name="x", type="smtp", interval=2.0, timeout=1.0, fall=3, rise=2,
                           options=config.HttpCheck(url="http://x/", host="", verify_tls=True))
    with pytest.raises(ValueError, match="no probe for a check of type 'smtp'"):
        probes.make_probe(odd)


def test_importing_the_probes_loads_neither_psycopg_nor_redis():
    code = "import sys, pretix_agent.checks.probes; print('psycopg' in sys.modules, 'redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
