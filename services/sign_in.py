"""Failed sign-ins on the UI's login form, counted per username and per client address in Redis.

The API's ``/auth`` counts its own with Flask-Limiter; this uses the library underneath it (``limits``),
with the same moving window, the same storage and the same allowances (``AUTH_FAILURES_PER_USER`` and
``AUTH_FAILURES_PER_ADDRESS`` a minute), so guessing through the UI is no cheaper than through the API.
"""

from __future__ import annotations

import functools
import math
import time

from limits import RateLimitItemPerMinute, storage, strategies

from services.config import Config

PREFIX = "studio-ui-sign-in"


@functools.lru_cache(maxsize=4)
def _window(url: str) -> strategies.MovingWindowRateLimiter:
    return strategies.MovingWindowRateLimiter(storage.storage_from_string(url))


def _budgets(config: Config, username: str, address: str | None) -> list[tuple[RateLimitItemPerMinute, str]]:
    budgets = [(RateLimitItemPerMinute(config.auth_failures_per_user, namespace=PREFIX), f"user:{username[:64]}")]
    if address:
        budgets.append((RateLimitItemPerMinute(config.auth_failures_per_address, namespace=PREFIX),
                        f"address:{address}"))
    return budgets


def seconds_to_wait(config: Config, username: str, address: str | None) -> int:
    """0 while ``username`` and ``address`` may try again, else how many seconds until one of them may."""
    window = _window(config.effective_redis_url)
    waits = [window.get_window_stats(item, key).reset_time - time.time()
             for item, key in _budgets(config, username, address) if not window.test(item, key)]
    return max(1, math.ceil(max(waits))) if waits else 0


def record_failure(config: Config, username: str, address: str | None) -> None:
    """Count one wrong password against the username and the address."""
    window = _window(config.effective_redis_url)
    for item, key in _budgets(config, username, address):
        window.hit(item, key)
