"""Health checks: probes (one module per external system), the fall/rise state machine, the runner."""
