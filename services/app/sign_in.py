"""One sign-in throttle for both doors, the API's ``POST /auth`` and the UI's sign-in form.

It slows a guesser down without locking an account's owner out, as the big identity providers do (per-address
backoff, and an account limit that spares the addresses the account already knows). Three counts, kept in
Redis so that every process of both doors shares them, each until :data:`COUNT_MEMORY_SECONDS` after its
latest wait ended (so a guesser who keeps going never starts afresh):

* **address and account**: ``Config.sign_in_free_failures`` wrong passwords from one client address for one
  account are heard one after the other (typos). After the last of them, and after each further one, that
  address waits before it may try that account again: :data:`FIRST_WAIT_SECONDS`, then twice as long each
  time, at most ``Config.sign_in_max_wait_seconds``. The right password clears this count.
* **address**: the same backoff over all accounts together once one address has made
  ``Config.sign_in_address_free_failures`` wrong guesses (one password tried on many accounts). A success does
  not clear it (a guesser would sign in to an account of their own between guesses); it just does not count.
* **account**: the same backoff over all addresses together once an account has had
  ``Config.sign_in_account_free_failures`` wrong passwords from addresses it does not know, against a guesser
  who spreads over many addresses. An address the account signed in from within :data:`FAMILIAR_SECONDS` is
  exempt, so its owner, at home, still gets in at once during a storm from elsewhere.

An attempt during a wait is refused before its password is checked (the API answers 429 with
``Retry-After``, the form "try again in N s"), so even the right password tells the guesser nothing then. An
attempt that is heard takes its place in the counts first, as a failure given back if it succeeds, so
parallel guesses cannot all slip through one open moment. While Redis is unreachable the same rules run on
counts kept in this process (at most :data:`FALLBACK_KEYS`), so stopping Redis does not open the door; they are
then per process rather than shared.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import redis

from services.jobs import runtime as jobs
from services.platform.config import Config
from services.storage.rows import User

log = logging.getLogger(__name__)
T = TypeVar("T")

FIRST_WAIT_SECONDS = 1.0  # the first wait after the free failures; each further failure doubles it
COUNT_MEMORY_SECONDS = 3600  # a count is forgotten an hour after its latest wait ended
FAMILIAR_SECONDS = 30 * 24 * 3600  # an address an account signed in from is known to it for 30 days
FALLBACK_KEYS = 100_000  # counts kept in this process while Redis is down; the oldest go first
IPV6_PREFIX = 64  # one IPv6 subscriber holds a whole /64: it counts as one address
LOOPBACK = "127.0.0.1"  # Streamlit reports 127.0.0.1 and ::1 as "no address"
PREFIX = "studio-sign-in"


@dataclass(frozen=True)
class Outcome:
    """What a sign-in attempt came to.

    Attributes:
        user: the account, when the password was right.
        wait: above 0 when the attempt was refused before its password was checked: whole seconds until this
            address may try again.
    """

    user: User | None = None
    wait: int = 0


def attempt(config: Config, username: str, address: str | None, check: Callable[[], User | None]) -> Outcome:
    """Pass one sign-in attempt through the throttle; ``check()`` verifies the password only if it is heard.

    Args:
        config: the sign-in fields (``sign_in_*``) and the Redis that keeps the counts.
        username: the name typed (a name no account has is counted just the same).
        address: the client's address as the door sees it (None: loopback, as Streamlit reports it).
        check: returns the user when the password is right, else None.
    """
    keys = Keys.of(username, address)
    counts = [Count(keys.pair, config.sign_in_free_failures), Count(keys.address, config.sign_in_address_free_failures)]
    if not _with_counts(config, lambda store: store.is_familiar(keys.familiar)):
        counts.append(Count(keys.account, config.sign_in_account_free_failures))
    wait = _with_counts(config, lambda store: store.reserve(counts, config.sign_in_max_wait_seconds, time.time()))
    if wait > 0:
        return Outcome(wait=math.ceil(wait))
    user = check()
    if user is not None:  # the pair's count is cleared; the others only take this attempt back
        give_back = [c.key for c in counts if c.key != keys.pair]
        _with_counts(config, lambda store: store.succeeded(keys, give_back))
    return Outcome(user=user)


def wait_after(failures: int, free: int, max_wait: float) -> float:
    """Seconds to wait after a count's ``failures``-th wrong password: none before the ``free``-th, then 1, 2, 4, ..."""
    extra = failures - free
    if extra < 0:
        return 0.0
    return min(FIRST_WAIT_SECONDS * 2.0 ** min(extra, 40), max_wait)


def client_address(address: str | None) -> str:
    """The address a count is kept for: IPv4 as is, IPv6 by its /64, loopback (None, ``::1``) as 127.0.0.1."""
    if not isinstance(address, str) or not address or address == "::1":
        return LOOPBACK
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # not an address (a Unix socket's peer): kept apart, and never holding '|'
        return address[:64].replace("|", "_")
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False))
    return str(ip)


@dataclass(frozen=True)
class Keys:
    """Where one attempt's counts live (the address never holds '|', so a name cannot make two keys meet)."""

    pair: str
    address: str
    account: str
    familiar: str

    @classmethod
    def of(cls, username: str, address: str | None) -> Keys:
        who, name = client_address(address), username[:64]  # no account name is longer
        return cls(f"{PREFIX}:pair:{who}|{name}", f"{PREFIX}:address:{who}", f"{PREFIX}:account:{name}",
                   f"{PREFIX}:familiar:{who}|{name}")


@dataclass(frozen=True)
class Count:
    """One count an attempt goes through: its key and how many wrong passwords it lets by before waits."""

    key: str
    free: int


@dataclass(frozen=True)
class Backoff:
    """A count's state: wrong passwords so far, and the time (epoch seconds) before which it hears no attempt."""

    failures: int = 0
    until: float = 0.0

    def failed(self, count: Count, max_wait: float, now: float) -> Backoff:
        failures = self.failures + 1
        wait = wait_after(failures, count.free, max_wait)
        return Backoff(failures, now + wait if wait else 0.0)

    def forgotten_at(self, now: float) -> float:
        """When this count is dropped: :data:`COUNT_MEMORY_SECONDS` after its wait ends (or after ``now``)."""
        return max(now, self.until) + COUNT_MEMORY_SECONDS


def decide(states: Sequence[Backoff], counts: Sequence[Count], max_wait: float,
           now: float) -> tuple[float, list[Backoff]]:
    """The seconds this attempt must wait (0: heard) and the counts' states after it, counted as a failure."""
    wait = max(s.until for s in states) - now
    if wait > 0:
        return wait, list(states)
    return 0.0, [s.failed(c, max_wait, now) for s, c in zip(states, counts, strict=True)]


class Counts(Protocol):
    """Where the counts are kept: Redis, or this process while Redis is down."""

    def is_familiar(self, key: str) -> bool: ...

    def reserve(self, counts: Sequence[Count], max_wait: float, now: float) -> float: ...

    def succeeded(self, keys: Keys, give_back: Sequence[str]) -> None: ...


class RedisCounts:
    """The counts in Redis; each change is one optimistic transaction (WATCH/MULTI), retried on a clash."""

    def __init__(self, client: redis.Redis):
        self.client = client

    def is_familiar(self, key: str) -> bool:
        return bool(self.client.exists(key))

    def reserve(self, counts: Sequence[Count], max_wait: float, now: float) -> float:
        keys = [c.key for c in counts]

        def take(pipe) -> float:
            states = [_backoff(pipe.hmget(key, "failures", "until")) for key in keys]
            wait, after = decide(states, counts, max_wait, now)
            pipe.multi()
            if wait <= 0:
                for key, state in zip(keys, after, strict=True):
                    pipe.hset(key, mapping={"failures": state.failures, "until": state.until})
                    pipe.expire(key, math.ceil(state.forgotten_at(now) - now))
            return wait

        return self.client.transaction(take, *keys, value_from_callable=True)

    def succeeded(self, keys: Keys, give_back: Sequence[str]) -> None:
        def back(pipe) -> None:
            states = [_backoff(pipe.hmget(key, "failures", "until")) for key in give_back]
            pipe.multi()
            pipe.delete(keys.pair)
            pipe.set(keys.familiar, 1, ex=FAMILIAR_SECONDS)
            for key, state in zip(give_back, states, strict=True):
                if state.failures > 0:  # an expired count is not made again (it would have no expiry)
                    pipe.hset(key, "failures", state.failures - 1)

        self.client.transaction(back, *give_back)


def _backoff(fields: list) -> Backoff:
    failures, until = fields
    return Backoff(int(failures or 0), float(until or 0.0))


class MemoryCounts:
    """The same counts in this process, for while Redis is down: bounded, oldest first out."""

    def __init__(self, max_keys: int = FALLBACK_KEYS):
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[Backoff | bool, float]] = OrderedDict()
        self._max_keys = max_keys
        self._warned_at = -math.inf

    def note_outage(self, exc: Exception) -> None:
        """Log that the counts fell back to this process (once a minute, however many attempts come)."""
        if time.monotonic() - self._warned_at > 60:
            self._warned_at = time.monotonic()
            log.warning("sign-in counts kept in this process: Redis is unreachable (%s)", exc)

    def _entry(self, key: str, now: float) -> tuple[Backoff | bool, float] | None:
        entry = self._items.get(key)
        return entry if entry is not None and entry[1] > now else None

    def _put(self, key: str, value: Backoff | bool, expires: float) -> None:
        self._items[key] = (value, expires)
        self._items.move_to_end(key)
        while len(self._items) > self._max_keys:
            self._items.popitem(last=False)

    def is_familiar(self, key: str) -> bool:
        with self._lock:
            return self._entry(key, time.time()) is not None

    def reserve(self, counts: Sequence[Count], max_wait: float, now: float) -> float:
        with self._lock:
            entries = [self._entry(c.key, now) for c in counts]
            states = [entry[0] if entry else Backoff() for entry in entries]
            wait, after = decide(states, counts, max_wait, now)
            if wait <= 0:
                for count, state in zip(counts, after, strict=True):
                    self._put(count.key, state, state.forgotten_at(now))
            return wait

    def succeeded(self, keys: Keys, give_back: Sequence[str]) -> None:
        now = time.time()
        with self._lock:
            self._items.pop(keys.pair, None)
            self._put(keys.familiar, True, now + FAMILIAR_SECONDS)
            for key in give_back:
                entry = self._entry(key, now)
                if entry is not None and entry[0].failures > 0:
                    self._put(key, Backoff(entry[0].failures - 1, entry[0].until), entry[1])


_fallback = MemoryCounts()


def _with_counts(config: Config, use: Callable[[Counts], T]) -> T:
    """``use`` the counts in Redis; while Redis is unreachable, the ones kept in this process."""
    try:
        return use(RedisCounts(jobs.redis_connection(config.effective_redis_url)))
    except redis.exceptions.RedisError as exc:
        _fallback.note_outage(exc)
        return use(_fallback)
