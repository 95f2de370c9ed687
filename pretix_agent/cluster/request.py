"""The cluster request: a file in the state directory through which `pretix-agentctl` asks the daemon.

Operators never need the database's credentials: ctl writes what it wants here (who, when, why, and
until when the request stands), the daemon sees it through inotify, removes it, carries it out
against PostgreSQL and reports the outcome, by request id, in its status file. One request at a
time: the file is created exclusively, so two operators cannot overwrite each other's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import Config
from .decide import Seen
from .model import ACTIONS, FORGET, Request

REQUEST_FILE = "cluster-request"
MEMORY_FILE = "cluster.json"
TAG = "pretix_agent_cluster_request"


def request_path(config: Config) -> Path:
    return config.agent.state_dir / REQUEST_FILE


def memory_path(config: Config) -> Path:
    return config.agent.state_dir / MEMORY_FILE


def encode(request: Request) -> bytes:
    document: dict[str, Any] = {TAG: 1, "id": request.id, "action": request.action, "by": request.by,
                                "at": request.at, "host": request.host, "expires_at": request.expires_at}
    if request.reason:
        document["reason"] = request.reason
    if request.node:
        document["node"] = request.node
    return (json.dumps(document, ensure_ascii=False) + "\n").encode("utf-8")


def parse(content: bytes | None, problem: str | None = None) -> Seen:
    """Given the request file's bytes (or why they could not be read), return the request or why it
    is refused. Never raises."""
    if problem is not None or content is None:
        return Seen(refusal=f"the request file cannot be read ({problem or 'unreadable'})")
    try:
        document = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return Seen(refusal="the request file is not JSON (write it with pretix-agentctl)")
    if not isinstance(document, dict) or document.get(TAG) != 1:
        return Seen(refusal="the request file was not written by pretix-agentctl")

    def text(key: str) -> str | None:
        value = document.get(key)
        return value if isinstance(value, str) and value else None

    def number(key: str) -> float | None:
        value = document.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    request_id, action = text("id") or "?", text("action") or "?"
    at, expires_at, by, host = number("at"), number("expires_at"), text("by"), text("host")
    if action not in ACTIONS:
        return Seen(refusal=f"unknown action {action!r}", id=request_id, action=action)
    if request_id == "?" or at is None or expires_at is None or by is None or host is None:
        return Seen(refusal="the request lacks its id, time, expiry, user or host", id=request_id, action=action)
    if action == FORGET and not text("node"):
        return Seen(refusal="forget names no node", id=request_id, action=action)
    return Seen(Request(id=request_id, action=action, by=by, at=at, host=host, expires_at=expires_at,
                        reason=text("reason"), node=text("node")), id=request_id, action=action)
