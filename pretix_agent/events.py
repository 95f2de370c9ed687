"""A log event a pure decision asks for: stable name, level, fields. The actuator logs it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    name: str
    level: str
    fields: dict[str, Any] = field(default_factory=dict)
