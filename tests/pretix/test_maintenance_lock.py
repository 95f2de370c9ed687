"""Maintenance lock against the real shop: nginx's 503 on both nodes, pretix's exempt paths reachable."""

from __future__ import annotations

import pytest

from . import scenarios

pytestmark = pytest.mark.pretix


def test_locking_both_nodes_makes_the_shop_answer_503_with_retry_after_while_control_api_and_webhooks_answer(
        cluster):
    outcome = scenarios.lock(cluster)
    print(outcome.figures)
    for node, pages in outcome.figures["pages"].items():
        for path in scenarios.LOCKED_PATHS:
            assert pages[path]["status"] == 503, (node, path, pages[path])
            assert pages[path]["retry_after"], (node, path, pages[path])
            assert pages[path]["maintenance_page"], (node, path, pages[path])
        for path in scenarios.EXEMPT:  # answered by pretix itself, not by the maintenance page
            assert pages[path]["status"] not in (502, 503, 504), (node, path, pages[path])
            assert not pages[path]["maintenance_page"], (node, path, pages[path])
        assert pages["/control/"]["status"] == 302  # pretix's login redirect
        assert pages["/api/v1/organizers/"]["status"] == 200  # the API token works through the lock
        assert pages["/healthcheck/"]["status"] == 200
    assert outcome.figures["after_unlock"] == {"app1": 200, "app2": 200}
