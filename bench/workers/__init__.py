"""Worker-side modules for bench/run.py's measure_workers()."""
