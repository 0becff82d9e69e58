"""Benchmarks: the gateway's added cost against going direct to a fake upstream, in one run.

`python -m bench.run [--quick]` (or `make bench`) starts a fake upstream (`bench.upstream`), seeds
a throw-away schema and Redis key prefix through the real CLI, starts the real gateway, drives
both with `bench.load` and prints a table plus PASS/MISS against the targets.
"""
