"""The drain request: a file in the state directory, written by `pretix-agentctl drain`.

Like the lock, a file is the interface, so a drain survives daemon restarts and works with the
daemon down (it takes effect when the daemon runs). Its content records who, when and why in the
lock's format (`maintenance.decide.encode_lock`); an empty file (from `touch`) is a drain too.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Config

DRAIN_FILE = "drain"


def drain_path(config: Config) -> Path:
    return config.agent.state_dir / DRAIN_FILE
