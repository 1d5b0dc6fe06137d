"""Benchmarks: scripts that print figures and ratios against baselines measured in the
same run. Nothing here gates CI; `make bench` runs them all and writes bench/REPORT.md."""
