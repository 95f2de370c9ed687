"""Prometheus metrics: the status document's typed values, named by Prometheus conventions.

The metrics controller (controller.py) runs once per cycle, after every controller that decides,
and keeps the latest snapshot: the status document as the daemon would publish it then. A scrape
(server.py, its own thread) or the textfile for node_exporter renders that snapshot; a scrape
never waits for the loop, and the loop never waits for a scrape. What the names are and where
each value comes from is sections.py: one `Section` per part of the status document, so a new
capability adds its metrics in one place.
"""
