"""The web process loads no ML stack: the API (its routes, request models, checks and job kinds) imports no torch.

Each check runs in a fresh interpreter, so the modules this test process already imported do not count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.models import MODELS, list_models

REPO = Path(__file__).resolve().parents[2]
# The ML stack: the web process may import none of these at start (predictions load them when first asked).
ML_STACK = ("torch", "torchvision", "timm", "onnxruntime", "efficientnet_lite_pytorch", "sklearn")


def imported_by(code: str, env: dict | None = None) -> set[str]:
    """The top-level packages in ``sys.modules`` after running ``code`` in a new interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_importing_the_api_imports_no_ml_stack(processes):
    loaded = imported_by("import services.api")
    assert "flask" in loaded and "services" in loaded  # the probe saw the API itself
    assert not loaded & set(ML_STACK), sorted(loaded & set(ML_STACK))


def test_the_wsgi_app_with_every_job_kind_registered_imports_no_ml_stack(tmp_path, processes):
    code = ("import services.web.wsgi\nfrom services.jobs.runtime import JOB_KINDS\n"
            "assert {'train', 'train_node', 'tune'} <= set(JOB_KINDS), sorted(JOB_KINDS)")
    loaded = imported_by(code, {"DATA_DIR": str(tmp_path), "JOB_MODULES": ""})
    assert not loaded & set(ML_STACK), sorted(loaded & set(ML_STACK))


def test_the_request_model_and_its_checks_import_no_ml_stack(processes):
    loaded = imported_by("import services.app.train_request, services.app.training, services.app.model_catalog")
    assert not loaded & set(ML_STACK), sorted(loaded & set(ML_STACK))


@pytest.mark.parametrize("name", [info.name for info in list_models()])
def test_every_declared_model_has_a_constructor_in_its_family_with_the_declared_weights(name):
    from engine.models.build import builder  # torch: the zoo's builders, imported here on purpose

    found = builder(name)
    info = MODELS[name]
    assert found.constructor.__module__ == f"engine.models.{info.family}"
    assert info.has_pretrained == (found.torchvision_weights is not None or found.bundled_weights is not None)
    assert info.bundled_weights == (found.bundled_weights is not None)
    model = found.constructor(num_classes=3, in_chans=3)
    assert model.num_classes == 3  # the zoo's face: what the registry lists can be built


def test_every_export_format_of_the_engine_has_a_file_suffix():
    from engine.inference import EXPORT_FORMATS
    from services.app.model_catalog import EXPORT_SUFFIXES

    assert set(EXPORT_SUFFIXES) == set(EXPORT_FORMATS)
