"""`make demo`: the agent in the foreground on a self-contained local setup."""
