"""Benchmarks that produce the measured numbers in docs/ (each prints the command to re-run it)."""
