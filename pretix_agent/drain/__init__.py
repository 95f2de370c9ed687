"""The planned drain of this node: on request (`pretix-agentctl drain`), and before a shutdown.

- `request`: the drain request file in the state directory (the lock's format: who, when, why).
- `decide`: the request and logind's shutdown signals in, why the node is drained and when to let
  the shutdown go on out (pure).
- `controller`: the capability as the daemon runs it: the request watched, logind's delay lock held.
"""
