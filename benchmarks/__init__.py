"""Benchmarks of stallwatch's cost: per request (``overhead``, ``components``) and idle
(``idle_cost``). Results and commands are in ``docs/benchmarks.md``."""
