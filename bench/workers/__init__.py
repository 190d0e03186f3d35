"""Worker-side modules for measure_workers() in bench/draining.py."""
