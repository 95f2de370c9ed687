"""Write the configuration reference generated from the schema into README.md (between its markers)."""
import re, subprocess, sys
ref = subprocess.run([sys.executable, "-m", "pretix_agent", "--config-reference"], capture_output=True, text=True, check=True).stdout
text = open("README.md").read()
start, end = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
a, b = text.index(start) + len(start), text.index(end)
open("README.md", "w").write(text[:a] + "\n" + ref + text[b:])
