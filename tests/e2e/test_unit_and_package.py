"""The unit file and the .deb as files, before anything is installed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .conftest import REPO, SYSTEM_PATH, version

UNIT = REPO / "systemd" / "pretix-agent.service"
MAX_EXPOSURE = 2.0


def exposure(output: str) -> float:
    """Given `systemd-analyze security` output, return the unit's overall exposure level."""
    match = re.search(r"Overall exposure level for pretix-agent\.service: (\d+\.\d+)", output)
    assert match, output
    return float(match.group(1))


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, env={"PATH": SYSTEM_PATH}, timeout=300)


def test_the_unit_file_scores_at_most_2_0_in_offline_systemd_analyze_security():
    result = run("systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT))
    assert result.returncode == 0, result.stderr
    assert exposure(result.stdout) <= MAX_EXPOSURE, result.stdout


def test_the_metrics_textfile_drop_in_keeps_the_unit_at_most_2_0(tmp_path: Path):
    units = tmp_path / "etc" / "systemd" / "system"
    (units / "pretix-agent.service.d").mkdir(parents=True)
    (units / "pretix-agent.service").write_text(UNIT.read_text())
    drop_in = REPO / "conf" / "systemd" / "pretix-agent.service.d" / "metrics-textfile.conf"
    (units / "pretix-agent.service.d" / drop_in.name).write_text(drop_in.read_text())
    result = run("systemd-analyze", "security", "--offline=true", f"--root={tmp_path}", "--no-pager",
                 "pretix-agent.service")
    assert result.returncode == 0, result.stderr
    assert exposure(result.stdout) <= MAX_EXPOSURE, result.stdout


def test_the_unit_never_ships_the_test_hooks():
    text = UNIT.read_text()
    assert "PRETIX_AGENT_TEST" not in text


def test_the_debian_changelog_version_is_the_python_package_version():
    changelog = REPO / "packaging" / "debian" / "changelog"
    result = run("dpkg-parsechangelog", "-l", str(changelog), "-S", "Version")
    assert result.stdout.strip() == version()


def test_lintian_pedantic_has_nothing_to_report(deb: Path):
    result = run("lintian", "--pedantic", "--display-info", "--fail-on", "none", str(deb))
    report = [line for line in (result.stdout + result.stderr).splitlines()
              if line != "running with root privileges is not recommended!"]
    assert result.returncode == 0 and report == [], "\n".join(report)


def test_the_package_depends_on_debians_python_libraries(deb: Path):
    depends = run("dpkg-deb", "-f", str(deb), "Depends").stdout
    for name in ("python3-watchdog", "python3-structlog", "python3-psycopg", "python3-redis", "python3-pydbus",
                 "python3-prometheus-client", "procps"):
        assert re.search(rf"(^|, ){re.escape(name)}\b", depends), (name, depends)
    assert "python3-sdnotify" not in depends  # our own sd_notify (pretix_agent/adapters/sdnotify.py)
    assert run("dpkg-deb", "-f", str(deb), "Architecture").stdout.strip() == "all"


def test_the_package_ships_commands_unit_man_pages_conffile_and_nginx_files(deb: Path, tmp_path: Path):
    listing = run("dpkg-deb", "-c", str(deb)).stdout
    paths = {line.split()[-1].lstrip(".") for line in listing.splitlines()}
    for path in ("/usr/bin/pretix-agent", "/usr/bin/pretix-agentctl", "/lib/systemd/system/pretix-agent.service",
                 "/usr/lib/sysusers.d/pretix-agent.conf", "/usr/lib/tmpfiles.d/pretix-agent.conf",
                 "/usr/share/man/man8/pretix-agent.8.gz", "/usr/share/man/man8/pretix-agentctl.8.gz",
                 "/etc/pretix-agent/agent.toml", "/usr/share/pretix-agent/nginx/maintenance.html",
                 "/usr/share/doc/pretix-agent/examples/nginx/pretix-maintenance.conf",
                 "/usr/share/doc/pretix-agent/examples/nginx/pretix-maintenance-map.conf",
                 "/usr/share/doc/pretix-agent/copyright"):
        assert path in paths, path
    assert run("dpkg-deb", "-e", str(deb), str(tmp_path / "control")).returncode == 0
    assert (tmp_path / "control" / "conffiles").read_text().split() == ["/etc/pretix-agent/agent.toml"]
