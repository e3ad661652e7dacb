"""Benchmarks of clsharelora (make bench): ShareLoRA vs LoRA cost, framework overhead, evaluation throughput,
scaling and large-model tables. Entry point: `python -m clsharelora.bench.run` / `clsharelora bench`."""
