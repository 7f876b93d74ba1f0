"""The one sign-in throttle both doors ask (services/app/sign_in.py): its waits, its counts in Redis, and what it
does while Redis is down (the browser test in tests/browser/test_navigation.py drives the form itself;
tests/system/test_hardening_accounts.py attacks both doors from outside)."""

from __future__ import annotations

from services.app import sign_in
from services.app.sign_in import Outcome
from services.platform.config import Config
from services.storage.rows import User


def wrong() -> None:
    return None


def test_the_waits_double_from_one_second_up_to_the_cap():
    assert [sign_in.wait_after(n, 5, 900) for n in range(1, 10)] == [0, 0, 0, 0, 1, 2, 4, 8, 16]
    assert sign_in.wait_after(15, 5, 900) == 900 and sign_in.wait_after(10**6, 5, 900) == 900


def test_the_counts_are_kept_in_redis_per_address_and_account(stack):
    config = stack.config
    for _ in range(config.sign_in_free_failures):
        assert sign_in.attempt(config, "nobody-yet", "10.0.0.9", wrong) == Outcome()
    assert sign_in.attempt(config, "nobody-yet", "10.0.0.9", wrong) == Outcome(wait=1)
    assert sign_in.attempt(config, "nobody-yet", "10.0.0.10", wrong) == Outcome()  # another address: heard
    assert sign_in.attempt(config, "somebody-else", "10.0.0.9", wrong) == Outcome()  # another account: heard


def test_while_redis_is_down_the_same_rules_run_on_counts_in_the_process(tmp_path):
    config = Config(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0")  # nothing listens there
    user = User(username="owner", role="client", created_at=0.0)
    for _ in range(config.sign_in_free_failures):
        assert sign_in.attempt(config, "owner", "10.0.1.1", wrong) == Outcome()
    assert sign_in.attempt(config, "owner", "10.0.1.1", lambda: user) == Outcome(wait=1)  # unheard
    assert sign_in.attempt(config, "owner", "10.0.1.2", lambda: user) == Outcome(user=user)  # the owner elsewhere


def test_ipv6_is_counted_by_its_64_and_loopback_as_one_address():
    assert sign_in.client_address("2001:db8:1:2:3:4:5:6") == sign_in.client_address("2001:db8:1:2:ffff::1") \
        == "2001:db8:1:2::/64"
    assert sign_in.client_address(None) == sign_in.client_address("::1") == "127.0.0.1"
    assert sign_in.client_address("::ffff:10.1.2.3") == "10.1.2.3"


def test_the_counts_in_the_process_are_bounded():
    counts = sign_in.MemoryCounts(max_keys=3)
    for i in range(10):
        assert counts.reserve([sign_in.Count(f"key{i}", 5)], 900, 1000.0) == 0
    assert len(counts._items) == 3
