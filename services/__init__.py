"""Adapters around the engine: HTTP API, background jobs, the catalog and the embedded Redis."""

__version__ = "0.1.0"
