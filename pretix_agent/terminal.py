"""What the operator's commands share (pretix-agentctl and its cluster verbs): exit codes, one line of
output made safe, who runs them, and how often they look at the daemon's status."""

from __future__ import annotations

import os
import pwd
import sys

from .display import printable

EXIT_OK = 0
EXIT_FAILING = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3

POLL_SECONDS = 0.02


def invoking_user() -> str:
    """Return who runs this command: the sudo caller if any, else the real user."""
    sudo_user = os.environ.get("SUDO_USER")
    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        name = f"uid {os.getuid()}"
    if sudo_user and os.getuid() == 0:
        return f"{sudo_user} (via sudo)"
    return name


def say(line: str, error: bool = False) -> None:
    """Print one line for people, control characters (newlines too) escaped. A closed stdout is not an
    error."""
    stream = sys.stderr if error else sys.stdout
    if stream is None:
        return
    try:
        stream.write(printable(line) + "\n")
        stream.flush()
    except BrokenPipeError:
        # The reader went away. Point the descriptor at /dev/null so the interpreter's final flush
        # does not fail again, and go on: the exit code still tells the caller what is true.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
