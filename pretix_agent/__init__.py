"""pretix-agent: one systemd-native daemon per node of a pretix cluster."""

__version__ = "0.1.0"
