"""``flask create-user`` in-process, through Flask's CLI runner: the same command and password rules as the real
``flask --app services.api create-user`` (run as a process once, in ``test_platform.py``)."""

from __future__ import annotations

import pytest

from services.api import create_app
from services.platform.config import Config
from services.storage.store import open_store


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    config = Config(data_dir=tmp_path_factory.mktemp("cli") / "data")
    config.ensure_dirs()
    return create_app(config)


@pytest.mark.parametrize("password", ["12345678", "password", "qwertyuiop123"])
def test_create_user_cli_refuses_weak_passwords(app, password):
    result = app.test_cli_runner().invoke(args=["create-user", "cli_weak", "--role", "admin"], input=password + "\n")
    assert result.exit_code != 0 and "password" in result.output, result.output
    assert open_store(app.extensions["studio"].config.data_dir).get_user("cli_weak") is None


def test_create_user_cli_keeps_the_password_out_of_its_output_and_signs_the_user_in(app):
    result = app.test_cli_runner().invoke(args=["create-user", "cli_ok", "--role", "annotator"],
                                          input="a-long-password\n")
    assert result.exit_code == 0, result.output
    assert "a-long-password" not in result.output
    signed_in = app.test_client().post("/auth", json={"username": "cli_ok", "password": "a-long-password"})
    assert signed_in.status_code == 200 and signed_in.get_json()["role"] == "annotator"
