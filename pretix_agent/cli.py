"""`pretix-agent`: run the daemon, or check a configuration file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from . import config as config_module
from .adapters import logs
from .errors import ConfigError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pretix-agent", description="Run the pretix-agent daemon in the "
                                "foreground (systemd starts it as Type=notify).")
    p.add_argument("-c", "--config", type=Path, default=config_module.DEFAULT_PATH,
                   help=f"configuration file (default {config_module.DEFAULT_PATH})")
    p.add_argument("--check-config", action="store_true",
                   help="validate the configuration, print every problem, exit 0 if valid, 1 if not")
    p.add_argument("--config-reference", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--version", action="version", version=f"pretix-agent {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.config_reference:
        sys.stdout.write(config_module.reference_markdown())
        return EXIT_OK
    from .capabilities import preflight  # the controllers import their libraries only when they run
    from .daemon import Daemon

    try:
        config = config_module.load(args.config)
        if args.check_config:
            problems = preflight(config)
            if problems:
                raise ConfigError(problems)
    except ConfigError as error:
        # Under journald (ExecReload= runs --check-config) the <3> prefix files each line as an
        # error, so `journalctl -p err -u pretix-agent` shows why a reload was refused.
        prefix = "<3>" if logs.under_journald(sys.stderr) else ""
        for problem in error.problems:
            print(f"{prefix}pretix-agent: {problem}", file=sys.stderr)
        return EXIT_FAILED
    if args.check_config:
        print(f"{args.config}: configuration is valid")
        return EXIT_OK
    logs.configure(config.log.level, config.log.format)

    try:
        return Daemon(args.config, config).run()
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
