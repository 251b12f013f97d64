"""Micro-benchmarks for botd2 (not installed; run from the repository root)."""
