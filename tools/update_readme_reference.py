"""Write the configuration reference generated from the schema into README.md (between its markers)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretix_agent.config import reference_markdown

START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
begin, end = text.index(START) + len(START), text.index(END)
readme.write_text(text[:begin] + "\n" + reference_markdown() + text[end:])
