"""Benchmarks: measured evidence for recall, collateral damage and throughput claims."""
