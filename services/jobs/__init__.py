"""Background jobs: the runtime that owns every job's lifecycle, the kinds, the worker."""
