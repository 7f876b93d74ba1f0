"""Everything around the engine, one folder per part: ``app`` (the actions and their rules), ``web`` and ``api``
(the HTTP door), ``ui`` (the Streamlit door's shared parts), ``jobs`` (the job runtime and worker), ``storage``
(the catalog) and ``platform`` (configuration, launcher, embedded Redis)."""

__version__ = "0.1.0"
