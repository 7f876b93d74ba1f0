"""Every kind of background job, in one place.

Importing a feature's service module registers its job kinds (:func:`services.jobs.runtime.job_kind`);
:func:`load_job_kinds` imports them all. The API and the workers both call it, so both know the same kinds,
and a worker runs nothing else (:class:`services.jobs.runtime.RegisteredJob`). Add a new feature's service module to
``JOB_MODULES``; a deployment may add its own through the ``JOB_MODULES`` environment variable.
"""

from __future__ import annotations

import importlib

from services.jobs.runtime import JOB_KINDS, JobKind
from services.platform.config import Config

JOB_MODULES = ("services.app.datasets", "services.app.generate", "services.app.suggestions", "services.app.training",
               "services.app.tuning")


def load_job_kinds(config: Config) -> dict[str, JobKind]:
    """Import every module that registers job kinds (the project's and ``config.job_modules``)."""
    for module in (*JOB_MODULES, *config.job_modules):
        importlib.import_module(module)
    return JOB_KINDS
