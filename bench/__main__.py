"""python3 -m bench [--only NAME,...] [--quick]: run the benchmarks, print one JSON document."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from . import checks, cluster, dbus, fixtures, haproxy, idle, lock_fencing, loki, maintenance, metrics, pretix

BENCHMARKS = {
    "idle": lambda quick: idle.run(seconds=5.0 if quick else 30.0),
    "maintenance": lambda quick: maintenance.run(trials=20 if quick else 200,
                                                 baseline_trials=10 if quick else 200),
    "checks": checks.run,
    "dbus": lambda quick: dbus.run(quick),
    "loki": loki.run,
    "haproxy": haproxy.run,
    "lock_fencing": lock_fencing.run,
    "fixtures": fixtures.run,
    "cluster": lambda quick: cluster.run(trials=20 if quick else 100, baseline_trials=5 if quick else 20),
    "metrics": metrics.run,
    "pretix": pretix.run,
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated: " + ", ".join(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="short runs, for trying the harness")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"bench: unknown benchmark {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "kernel": platform.release()},
               "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": args.quick}
    for name in names:
        print(f"bench: running {name} ...", file=sys.stderr)
        results[name] = BENCHMARKS[name](args.quick)
    text = json.dumps(results, indent=2)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
