"""haproxy's agent-check, answered for this node, so haproxy on any host can poll it.

- `verdict`: the node's check states and drain in, the answer line and why out (pure).
- `controller`: the capability as the daemon runs it: the responder thread (haproxy/agent_check.py)
  answers with the verdict of the latest cycle.
"""
