"""Maintenance mode: the marker nginx looks at, the lock, the weekly windows.

- `decide`: lock, marker and windows (../schedule.py) in, actions and one sentence out (pure).
- `files`: reading the lock and marker, and carrying a decision out on them (atomic writes).
- `controller`: the capability as the daemon runs it: inotify on the files' directory, a wall-clock
  timer at the next window edge, observe, decide, act.
"""
