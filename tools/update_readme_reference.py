"""Write the references generated from the code into the documentation, between their markers: the
configuration reference (from the schema) into README.md, the metrics (from their sections) into
docs/metrics.md."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretix_agent.config import reference_markdown
from pretix_agent.metrics.model import reference_markdown as metrics_markdown
from pretix_agent.metrics.sections import SECTIONS

ROOT = Path(__file__).resolve().parents[1]


def write_between(path: Path, start: str, end: str, content: str) -> None:
    text = path.read_text()
    begin, finish = text.index(start) + len(start), text.index(end)
    path.write_text(text[:begin] + "\n" + content + text[finish:])


write_between(ROOT / "README.md", "<!-- config-reference:start -->", "<!-- config-reference:end -->",
              reference_markdown())
write_between(ROOT / "docs" / "metrics.md", "<!-- metrics-reference:start -->", "<!-- metrics-reference:end -->",
              metrics_markdown(SECTIONS))
