"""Shipping logs to Grafana Loki's push API, with nothing lost across a Loki outage or a restart.

- `entries`: what a log line is on its way to Loki (labels, timestamp, line, journal cursor), the
  labels themselves, and the interface every source implements.
- `push`: the HTTP push: request body, gzip, headers, credentials, and what each answer means.
- `journal`: the systemd journal as source *and* buffer (`journalctl --follow`, cursor persisted
  only after Loki accepted the batch that contains it).
- `memory`: without systemd, the daemon's own events through a bounded in-memory queue, fed by a
  structlog processor.
- `shipper`: the thread that batches, pushes, retries without a cap, and reports its status.
"""

from .entries import Entry, Labeler, Source
from .journal import JournalSource
from .memory import MemorySource
from .shipper import LokiShipper, choose_source, heartbeat_deadline

__all__ = ["Entry", "JournalSource", "Labeler", "LokiShipper", "MemorySource", "Source", "choose_source",
           "heartbeat_deadline"]
