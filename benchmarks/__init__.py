"""Throughput and memory benchmarks: a load generator usable against any instance or fleet URL,
the blog-style baseline app, the ASR-only limit, and the GPU runs whose results are committed in
benchmarks/results/."""
