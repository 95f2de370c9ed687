"""Adapters: every external system behind a narrow interface, one module each."""
