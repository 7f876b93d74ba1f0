"""Every kind of background job, in one place.

Importing a feature's service module registers its job kinds (:func:`services.jobs.job_kind`);
:func:`load_job_kinds` imports them all. The API and the workers both call it, so both know the same kinds,
and a worker runs nothing else (:class:`services.jobs.RegisteredJob`). Add a new feature's service module to
``JOB_MODULES``; a deployment may add its own through the ``JOB_MODULES`` environment variable.
"""

from __future__ import annotations

import importlib

from services.config import Config
from services.jobs import JOB_KINDS, JobKind

JOB_MODULES = ("services.datasets", "services.generate", "services.suggestions", "services.training",
               "services.tuning")


def load_job_kinds(config: Config) -> dict[str, JobKind]:
    """Import every module that registers job kinds (the project's and ``config.job_modules``)."""
    for module in (*JOB_MODULES, *config.job_modules):
        importlib.import_module(module)
    return JOB_KINDS
