"""Accounts from outside: a deleted account's tokens stay dead when its name is given to a new account, and a
storm of wrong passwords slows its sender down without locking the account's owner out, at the API's door
and at the UI's sign-in form alike (one throttle, one set of counts in Redis).

Two addresses on one machine: the loopback network is all of 127/8, so a client socket bound to 127.0.x.y
reaches the API on 127.0.0.1 from an address of its own (the API counts ``remote_addr``).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import requests
import socketio
import streamlit as st
from requests.adapters import HTTPAdapter

from services.api import create_app
from services.app import sign_in as throttle
from services.platform.config import REPO_ROOT
from tests.harness import unique

PASSWORD = "tawny-owl-gravel-42"


class FromAddress(HTTPAdapter):
    """Connections whose client end is bound to one local address."""

    def __init__(self, address: str):
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def client_at(address: str) -> requests.Session:
    session = requests.Session()
    session.mount("http://", FromAddress(address))
    return session


def sign_in(stack, name: str, password: str, client=requests) -> requests.Response:
    return client.post(stack.url + "/auth", json={"username": name, "password": password}, timeout=30)


def new_account(stack, role: str) -> str:
    name = unique("acct")
    make_account(stack, name, role)
    return name


def make_account(stack, name: str, role: str) -> None:
    r = requests.post(stack.url + "/api/v1/users", json={"username": name, "password": PASSWORD, "role": role},
                      headers=stack.headers("admin"), timeout=30)
    assert r.status_code == 201, r.text


def socket_connects(stack, token: str) -> bool:
    client = socketio.Client(reconnection=False)
    try:
        client.connect(stack.url, namespaces=["/jobs"], auth={"token": token}, wait_timeout=10,
                       transports=["websocket"])
    except socketio.exceptions.ConnectionError:
        return False
    client.disconnect()
    return True


# --- break 8: tokens come back to life -----------------------------------------------------------
def test_a_deleted_accounts_token_stays_dead_when_its_name_is_given_to_a_new_account(stack):
    name = new_account(stack, "client")
    old = sign_in(stack, name, PASSWORD).json()["access_token"]
    assert socket_connects(stack, old)
    r = requests.delete(f"{stack.url}/api/v1/users/{name}", headers=stack.headers("admin"), timeout=30)
    assert r.status_code == 200
    make_account(stack, name, "operator")  # the same name, another role

    r = requests.get(stack.url + "/api/v1/jobs", headers={"Authorization": f"Bearer {old}"}, timeout=30)
    assert r.status_code == 401 and "revoked" in r.json()["message"]
    assert not socket_connects(stack, old)
    fresh = sign_in(stack, name, PASSWORD)
    assert fresh.json()["role"] == "operator"
    token = fresh.json()["access_token"]
    assert requests.get(stack.url + "/api/v1/jobs", headers={"Authorization": f"Bearer {token}"},
                        timeout=30).status_code == 200
    assert socket_connects(stack, token)


# --- break 9: ten wrong passwords a minute locked the owner out ------------------------------------
def test_a_guessers_address_waits_longer_and_longer_while_the_owner_signs_in_at_once(stack):
    guesser = client_at("127.0.9.2")
    answers = [sign_in(stack, "admin", f"guess-{i}", guesser) for i in range(50)]
    codes, free = [r.status_code for r in answers], stack.config.sign_in_free_failures
    assert codes[:free + 1] == [401] * free + [429]
    assert answers[free].json() == {"error": "too_many_requests", "field": None,
                                    "message": "too many failed sign-ins; try again in 1 s"}
    assert answers[free].headers["Retry-After"] == "1"
    assert codes.count(401) <= free + 1  # the rest were refused unheard (one more only on a very slow machine)

    start = time.monotonic()  # meanwhile the owner, from an address of their own, gets in at once
    assert sign_in(stack, "admin", stack.passwords["admin"]).status_code == 200
    assert time.monotonic() - start < 3

    waits = []
    for _ in range(2):
        heard = sign_in(stack, "admin", "another-guess", guesser)
        while heard.status_code == 429:  # wait as told, then guess again
            time.sleep(int(heard.headers["Retry-After"]) + 0.1)
            heard = sign_in(stack, "admin", "another-guess", guesser)
        assert heard.status_code == 401
        refused = sign_in(stack, "admin", "yet-another-guess", guesser)
        assert refused.status_code == 429
        waits.append(int(refused.headers["Retry-After"]))
        # during a wait even the right password is refused unheard: the guesser cannot tell it from a wrong one
        assert sign_in(stack, "admin", stack.passwords["admin"], guesser).status_code == 429
    assert waits[0] >= 2 and waits[1] == 2 * waits[0]  # each wrong password past the free ones doubles the wait


def test_the_right_password_clears_that_addresss_backoff(stack):
    name, free = new_account(stack, "client"), stack.config.sign_in_free_failures
    me = client_at("127.0.9.3")
    assert [sign_in(stack, name, "typo", me).status_code for _ in range(free + 1)] == [401] * free + [429]
    time.sleep(1.1)
    assert sign_in(stack, name, PASSWORD, me).status_code == 200
    assert [sign_in(stack, name, "typo", me).status_code for _ in range(free)] == [401] * free


def test_parallel_guesses_from_one_address_cannot_slip_past_the_count(stack):
    name, free = new_account(stack, "client"), stack.config.sign_in_free_failures

    def guess(i: int) -> int:
        return sign_in(stack, name, f"guess-{i}", client_at("127.0.9.4")).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(guess, range(32)))
    assert set(codes) == {401, 429} and codes.count(401) <= free + 1, codes


def test_guesses_spread_over_many_addresses_wait_but_not_the_owner_at_an_address_the_account_knows(stack):
    name = new_account(stack, "annotator")
    assert sign_in(stack, name, PASSWORD).status_code == 200  # the owner's address: known to the account
    storm = stack.config.sign_in_account_free_failures
    codes = [sign_in(stack, name, "guess", client_at(f"127.0.10.{i}")).status_code for i in range(1, storm + 1)]
    assert codes == [401] * storm  # each address is within its own allowance, but the account now waits 1 s
    time.sleep(1.1)  # and one more wrong password doubles that, so that the check below cannot miss it
    assert sign_in(stack, name, "guess", client_at("127.0.10.100")).status_code == 401
    stranger = sign_in(stack, name, PASSWORD, client_at("127.0.10.200"))
    assert stranger.status_code == 429 and stranger.headers["Retry-After"] in ("1", "2")
    start = time.monotonic()
    assert sign_in(stack, name, PASSWORD).status_code == 200  # its owner still gets in, at once
    assert time.monotonic() - start < 3


def test_the_form_and_the_api_share_one_throttle_and_the_owner_elsewhere_gets_in(stack, monkeypatch):
    name, free = new_account(stack, "annotator"), stack.config.sign_in_free_failures
    # A run of the form under AppTest takes most of a second, as long as the first wait: this process's clock
    # stands still unless the test moves it, as for a guesser faster than the waits.
    clock = [time.time()]
    monkeypatch.setattr(throttle, "time", SimpleNamespace(time=lambda: clock[0], monotonic=time.monotonic))
    form = sign_in_form(stack, monkeypatch)  # Streamlit reports a browser on 127.0.0.1 as no address
    for i in range(free):
        assert submit(form, name, f"guess-{i}") == "Wrong username or password."
    assert submit(form, name, PASSWORD) == "Too many failed sign-ins; try again in 1 s."  # right, but unheard
    api = create_app(stack.config).test_client()  # the API's door, in this process and so on its clock
    r = api.post("/auth", json={"username": name, "password": PASSWORD}, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"  # it counts the form's guesses
    clock[0] += 1
    r = api.post("/auth", json={"username": name, "password": "guess"}, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert r.status_code == 401
    assert submit(form, name, PASSWORD) == "Too many failed sign-ins; try again in 2 s."  # and the form the API's
    assert not form.exception

    assert sign_in(stack, name, PASSWORD, client_at("127.0.11.1")).status_code == 200  # the owner, elsewhere
    monkeypatch.setattr(type(st.context), "ip_address", property(lambda _self: "192.0.2.7"))
    owner = sign_in_form(stack, monkeypatch)  # the owner's browser, at another address
    assert submit(owner, name, PASSWORD) == ""
    # Signed in: the sidebar names them. (The page after it is not drawn here: AppTest runs app.py from a
    # script of its own, beside which there is no pages/ folder.)
    assert f"Signed in as **{name}** (annotator)" in [m.value for m in owner.sidebar.markdown]


def sign_in_form(stack, monkeypatch):
    """The UI's sign-in page under AppTest, on the stack's catalog and Redis."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DATA_DIR", str(stack.data_dir))
    monkeypatch.setenv("REDIS_URL", stack.redis_url)
    st.cache_resource.clear()  # the config is cached per process: make the page read the stack's
    # app.py is run from a script of its own: AppTest.from_file would take app.py's pages/ folder for the old
    # file-based navigation and, on the second run, open pages/home.py instead of the form.
    at = AppTest.from_string(f"import runpy\nrunpy.run_path({str(REPO_ROOT / 'app.py')!r}, run_name='__main__')\n",
                             default_timeout=30)
    at.run()
    assert not at.exception
    return at


def submit(at, username: str, password: str) -> str:
    """Fill the sign-in form and press Sign in; the error it shows ('' when none)."""
    at.text_input(key="login_username").set_value(username)
    at.text_input(key="login_password").set_value(password)
    at.button[0].click().run()
    return at.error[0].value if at.error else ""
