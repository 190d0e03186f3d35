"""Benchmark harness for mem0-receiver (see bench/README.md)."""
