"""The UI's failed sign-ins are counted in Redis per username and per address, like the API's
(the browser test in tests/browser/test_navigation.py drives the form itself)."""

from __future__ import annotations

from services import sign_in


def test_the_wait_is_counted_in_redis_per_username_and_per_address(stack):
    config = stack.config
    assert sign_in.seconds_to_wait(config, "nobody-yet", "10.0.0.9") == 0
    for _ in range(config.auth_failures_per_user):
        sign_in.record_failure(config, "nobody-yet", "10.0.0.9")
    assert 0 < sign_in.seconds_to_wait(config, "nobody-yet", "10.0.0.10") <= 60  # another address: same user
    assert sign_in.seconds_to_wait(config, "somebody-else", "10.0.0.11") == 0
