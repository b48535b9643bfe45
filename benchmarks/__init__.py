"""kitmw's performance harness: ``python -m benchmarks`` (see docs/performance.md)."""
