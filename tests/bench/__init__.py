"""Tests of the benchmarks (their pure-Python parts: the simulators are not in the main venv)."""
