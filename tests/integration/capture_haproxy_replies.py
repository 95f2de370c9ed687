"""Capture real Runtime API replies from the installed haproxy into tests/unit/data/haproxy/X.Y/.

The unit tests of the parsers run on these files, so they test haproxy's real words and formats,
of every haproxy release the agent supports: 2.6 (Debian 12) and 3.0 (Debian 13). Run from the
repository root when haproxy is upgraded (another haproxy: PRETIX_AGENT_TEST_HAPROXY=/path):

    /usr/bin/python3 -m tests.integration.capture_haproxy_replies

Debian 13's replies are captured inside the booted Debian 13 of the end-to-end tier, by
`python3 -m tests.e2e.capture_haproxy_replies`. Every file is the exact bytes haproxy sent for one
exchange (`<name>.txt`); VERSION.txt records which haproxy said them; X.Y is its major and minor
version.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from pretix_agent.haproxy.agent_check import AgentCheckResponder

from .haproxy_fixture import HaproxyFixture

DATA_ROOT = Path(__file__).resolve().parents[1] / "unit" / "data" / "haproxy"


def exchange(path: Path, line: str) -> bytes:
    """Send one line to a Runtime API socket the way socat does; return every byte of the reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(line.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def main() -> int:
    responder = AgentCheckResponder("127.0.0.1:0", lambda: "down 100% #web-app4: connection refused\n")
    responder.start()
    assert responder.address is not None
    options = {"app3": "weight 100", "app5": "disabled"}
    with HaproxyFixture(servers=5, http_check=True, check_inter="200ms", server_options=options,
                        agent_ports={"app4": responder.address[1]}, agent_inter="200ms") as hx:
        api = hx.runtime()
        hx.wait_for(lambda: all(s.up for s in api.servers_state() if s.server in ("app1", "app2", "app3")),
                    "app1..app3 up")
        api.set_server_state("pretix", "app2", "maint")
        api.set_server_state("pretix", "app3", "drain")
        hx.wait_for(lambda: not hx.server_state("pretix", "app4").up, "the agent to take app4 down")
        replies = {
            "show_servers_state": "show servers state",
            "show_servers_state_backend": "show servers state pretix",
            "show_info": "show info",
            "show_stat": "show stat",
            "set_server_ok": "set server pretix/app1 state ready",
            "no_such_backend": "set server nosuchbackend/app1 state maint",
            "no_such_server": "set server pretix/nosuchserver state maint",
            "cant_find_backend": "show servers state nosuchbackend",
            "bad_state_word": "set server pretix/app1 state sleeping",
            "unknown_command": "show everything",
            "three_commands": "set server pretix/app1 state ready; set server pretix/nosuchserver state drain; "
                              "show servers state pretix",
        }
        captured = {name: exchange(hx.admin_socket, line) for name, line in replies.items()}
        captured["permission_denied"] = exchange(hx.user_socket, "set server pretix/app1 state maint")
        captured["user_level_show_servers_state"] = exchange(hx.user_socket, "show servers state")
        version = api.info()["Version"]
        data = DATA_ROOT / ".".join(version.split(".")[:2])
        data.mkdir(parents=True, exist_ok=True)
        for name, reply in captured.items():
            (data / f"{name}.txt").write_bytes(reply)
        (data / "VERSION.txt").write_text(f"haproxy {version}\n"
                                          "app1 ready+up, app2 set to maint, app3 (weight 100) set to drain, "
                                          "app4 down by agent-check, app5 `disabled` in haproxy.cfg\n")
    responder.stop()
    print(f"captured into {data} from haproxy {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
