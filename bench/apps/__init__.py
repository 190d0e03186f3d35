"""ASGI apps compared by bench/run.py; each exposes ``app`` and ``signed_url(base)``."""
