"""Benchmarks: `make bench` (or `python3 -m bench`) prints one JSON document.

Every figure stands beside a baseline measured in the same run, as a ratio, so numbers from
different machines stay comparable. No benchmark asserts anything: targets are reported, not enforced.
"""
