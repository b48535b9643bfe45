"""kitmw's performance harness: ``python -m benchmarks`` (see benchmarks/README.md)."""
