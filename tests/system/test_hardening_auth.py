"""Password guessing is throttled per address and account, and per address; unknown users cost as much as known ones.

The owner of an account under attack still signs in: tests/system/test_hardening_accounts.py.
"""

from __future__ import annotations

import secrets
import statistics
import time

import requests

from services.api import create_app
from services.platform.config import Config
from services.storage.store import open_store


def test_wrong_passwords_for_one_user_from_one_address_get_429_after_the_free_ones(stack):
    name = f"victim_{secrets.token_hex(3)}"
    password = "fine-long-passphrase-9"
    open_store(stack.data_dir).create_user(name, password, "client")
    free = stack.config.sign_in_free_failures
    answers = [requests.post(stack.url + "/auth", json={"username": name, "password": f"guess{i}"}, timeout=30)
               for i in range(free + 2)]
    assert [a.status_code for a in answers[:free]] == [401] * free
    assert [a.status_code for a in answers[free:]] == [429, 429]
    refused = answers[-1]
    assert refused.json()["error"] == "too_many_requests" and int(refused.headers["Retry-After"]) == 1
    # even the right password waits: the guesser cannot tell which guess would have been right
    assert requests.post(stack.url + "/auth", json={"username": name, "password": password},
                         timeout=30).status_code == 429
    # other users are not locked out by it, even at the same address
    assert requests.post(stack.url + "/auth", json={"username": "client", "password": stack.passwords["client"]},
                         timeout=30).status_code == 200


def test_successful_sign_ins_are_not_throttled(stack):
    body = {"username": "annotator", "password": stack.passwords["annotator"]}
    codes = [requests.post(stack.url + "/auth", json=body, timeout=30).status_code for _ in range(15)]
    assert codes == [200] * 15


def test_one_address_guessing_many_usernames_is_throttled(stack, tmp_path):
    config = Config(data_dir=tmp_path, redis_url=stack.redis_url, sign_in_address_free_failures=5,
                    sign_in_free_failures=100, sign_in_account_free_failures=100)
    client = create_app(config).test_client()
    address = f"10.9.{secrets.randbelow(250)}.{secrets.randbelow(250)}"

    def attempt(user, addr):
        return client.post("/auth", json={"username": user, "password": "x"}, environ_base={"REMOTE_ADDR": addr})

    codes = [attempt(f"someone{i}", address).status_code for i in range(7)]
    assert codes == [401] * 5 + [429] * 2
    assert attempt("someone0", "10.250.0.1").status_code == 401  # another address is unaffected


def test_unknown_users_take_as_long_as_known_ones(tmp_path):
    store = open_store(tmp_path)
    store.create_user("realname", "fine-long-passphrase-9", "operator")

    def median_seconds(username):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            assert store.check_password(username, "wrong-password") is None
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    known, unknown = median_seconds("realname"), median_seconds("nobody_here")
    assert unknown > 0.5 * known, (known, unknown)
