"""The cluster as one, through the PostgreSQL every pretix cluster already runs (SPEC 9).

- `model`: what the database holds and what a node publishes (plain frozen values).
- `schema`: the agent's schema (`pretix-agentctl cluster init`) and every statement it sends.
- `node`: what this node publishes about itself, derived from its configuration and its last cycle.
- `decide`: pure: the cluster lock mirrored into the local lock file, disagreements, the plan of a cycle.
- `request`: the request file through which `pretix-agentctl` asks the daemon (the operator never
  needs the database's credentials).
- `store`: the PostgreSQL adapter: one connection kept open, LISTEN, a deadline on every call.
- `worker`: the thread that does all the database talk; the main loop never blocks on it.
- `controller`: the capability as the daemon runs it.
- `command`: the ctl verbs (`lock|unlock --cluster`, `status --cluster`, `cluster init|forget`).
"""
