"""Lock fencing: terminate a hung session that holds pretix's advisory locks while others wait.

`model` holds the plain values (what one look at the primary sees, what to terminate), `decide`
the pure decision, `postgres` the adapter to the primary, `worker` the thread that looks, decides
and acts every interval. Why and what it never touches: docs/lock_fencing.md.
"""
