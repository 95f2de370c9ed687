"""One exception hierarchy. `cli.py` and `ctl.py` are the only places that decide what is fatal."""


class AgentError(Exception):
    """Base of every error pretix-agent raises on purpose; its message is one line for a human."""


class ConfigError(AgentError):
    """The configuration cannot be used; `problems` holds every problem found, each with its path."""

    def __init__(self, problems: list["ConfigProblem"]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


class ConfigProblem:
    """One problem in a configuration file: where (file, TOML path, line) and what."""

    def __init__(self, file: str, path: str, message: str, line: int | None = None):
        self.file = file
        self.path = path
        self.message = message
        self.line = line

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    def __repr__(self) -> str:
        return f"ConfigProblem({self!s})"


class FileWriteError(AgentError):
    """A state file (marker, lock, status) could not be written or removed."""


class StatusUnavailable(AgentError):
    """The daemon's status file is missing, unreadable or not a status document."""


class DBusUnavailable(AgentError):
    """A D-Bus feature (systemd unit states, the shutdown delay lock) cannot work here: no python3-gi,
    no system bus, no permission, or the service (systemd, logind) is not on the bus. The daemon
    logs it once and runs on without that feature."""
