"""haproxy: the Runtime API, the agent-check responder, and the decision what to change."""
