"""The catalog: rows and the store."""
