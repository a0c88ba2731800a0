"""What the remote tiers (kvcache.redis, kvcache.memcached) share, with no I/O and no backend.

Each tier sends its own commands (blocking or awaited) around these steps: the arguments and
state (``TierCore``), the fill guard (a copy read or written while the same name changed is not
kept), the counters, and health: one ``Breaker`` per node inside a ``NodeHealth``, which a
backend teaches what its errors mean (an outage trips the node's breaker; a rejection, the
server answering "no", is counted and logged instead).  The local hit itself is compiled
(kvcache/_tiered.pyx).
"""

import logging
import random
import threading
import time
from collections import namedtuple

from kvcache._tiered import MISSING, TieredBase
from kvcache.serialize import Cipher, SerializationError, Serializer

__all__ = [
    "DEFAULT", "MISSING", "OUTAGE", "REJECTION", "Batch", "Breaker", "NodeHealth", "TierCore", "TierStats",
    "batch_keys", "namespace_prefix",
]

_monotonic = time.monotonic
_MISSING = MISSING
# The `ttl` argument's default: the tier's own ttl (None is a value: no expiry).
DEFAULT = _DEFAULT = object()

TierStats = namedtuple(
    "TierStats",
    "local_hits remote_hits misses sets deletes errors invalidations circuit live rejections "
    "stream_error",
)
TierStats.__doc__ = """Counters of a remote tier (kvcache.redis, kvcache.memcached).

``local_hits``/``remote_hits``/``misses`` count reads answered by the local tier,
by the server, by nobody; ``errors`` counts outages (server unreachable, timed out) and
decoding failures, swallowed or raised; ``rejections`` counts commands the server
refused (OOM, NOPERM, WRONGTYPE, a value over ``max_value_size``), which never open
the breaker; ``invalidations`` counts keys dropped on notice from Redis (the
Memcached tier has no notices: 0);
``circuit`` is the worst breaker state over the nodes: ``"closed"``, ``"open"`` or
``"half-open"``; ``live`` tells whether the invalidation stream is up (the local
tier is trusted only then; always True on the Memcached tier, whose copies carry their
own trust windows); ``stream_error`` is None, or why the server refuses the
stream (a missing ACL permission, named): the tier then keeps reading Redis on every
call.
"""


def namespace_prefix(namespace):
    """Return the key prefix of `namespace` (bytes): escaped, then ``:``.

    ``\\`` becomes ``\\\\`` and ``:`` becomes ``\\:``, so the prefix ends at its first
    unescaped ``:`` and no namespace's prefix starts another's (``app`` and ``app:v`` are
    disjoint), while a plain namespace keeps its plain name (an ACL ``~app:*`` fits).
    """
    return namespace.replace(b"\\", b"\\\\").replace(b":", b"\\:") + b":"


OUTAGE = "outage"
REJECTION = "rejection"


class Breaker:
    """Closed -> open after `threshold` consecutive outages (one timeout opens it at once).

    Open: every call fails open at once until a jittered backoff has passed.  Half-open:
    exactly one caller gets through as the probe; the others keep failing open until the
    probe reports (success closes, failure reopens with a doubled backoff), so a hung server
    costs one socket timeout per probe, not one per call.  ``timeouts``: the exception types
    that mean the node timed out (a backend adds its client's own).
    """

    timeouts: tuple[type[BaseException], ...] = (TimeoutError,)
    __slots__ = ("threshold", "base", "cap", "failures", "open_until", "delay", "trial", "lock")

    def __init__(self, threshold, base, cap):
        self.threshold = threshold
        self.base = base
        self.cap = cap
        self.failures = 0
        self.open_until = 0.0
        self.delay = base
        self.trial = False
        self.lock = threading.Lock()

    @property
    def state(self):
        if self.failures < self.threshold:
            return "closed"
        return "half-open" if _monotonic() >= self.open_until else "open"

    def allow(self):
        """Return whether a call may go to the node now (True makes the caller the probe when half-open)."""
        if self.failures < self.threshold:
            return True
        with self.lock:
            if self.failures < self.threshold:
                return True
            now = _monotonic()
            # A probe whose outcome was never reported (caller interrupted) expires.
            if now < self.open_until or (self.trial and now < self.open_until + 2 * self.cap):
                return False
            self.trial = True
            return True

    def success(self):
        if self.failures:
            with self.lock:
                self.failures = 0
                self.delay = self.base
                self.trial = False

    def failure(self, exc=None):
        with self.lock:
            # Waiting is what a timeout costs: do not pay it `threshold` times.
            if isinstance(exc, self.timeouts):
                self.failures = max(self.failures + 1, self.threshold)
            else:
                self.failures += 1
            if self.failures >= self.threshold:
                # Jitter keeps a fleet of processes from probing a recovering server in lockstep.
                self.open_until = _monotonic() + self.delay * random.uniform(0.5, 1.0)
                self.delay = min(self.delay * 2, self.cap)
                self.trial = False


_STATE_RANK = {"closed": 0, "half-open": 1, "open": 2}


class NodeHealth:
    """One breaker per node (named ``host:port``), and what to do with an error.

    A backend subclass says what its errors mean: ``classify(exc)`` returns OUTAGE or
    REJECTION, ``rejection_kind(exc)`` a short name to log, ``what`` the server's name.
    """

    what = "the server"
    breaker_type = Breaker
    log = logging.getLogger("kvcache")

    def __init__(self, threshold, base, cap):
        self._args = (threshold, base, cap)
        self._nodes = {}  # "host:port" -> Breaker
        self._lock = threading.Lock()
        self._seen = set()  # rejection kinds already logged

    def node(self, node_name):
        """Return the breaker of the node named ``host:port``."""
        b = self._nodes.get(node_name)
        if b is None:
            with self._lock:
                b = self._nodes.setdefault(node_name, self.breaker_type(*self._args))
        return b

    def breakers(self):
        """Return every breaker in use."""
        return list(self._nodes.values())

    def classify(self, exc):
        """Return OUTAGE or REJECTION for `exc`."""
        raise NotImplementedError

    def rejection_kind(self, exc):
        """Return a short name for a rejection."""
        return type(exc).__name__

    @property
    def state(self):
        """The worst breaker state over the nodes ("closed", "half-open" or "open")."""
        return max((b.state for b in self.breakers()), key=_STATE_RANK.__getitem__)

    def reset(self, node_name):
        """Close the breaker of a node that just proved reachable (its invalidation stream came up)."""
        self.node(node_name).success()

    def record(self, exc, breaker):
        """Feed `exc` to `breaker`; return OUTAGE or REJECTION; log each rejection kind once."""
        kind = self.classify(exc)
        if kind is OUTAGE:
            breaker.failure(exc)
            return kind
        breaker.success()  # the node answered
        rk = self.rejection_kind(exc)
        if rk not in self._seen:
            self._seen.add(rk)
            self.log.warning("%s rejected a command (%s): %s; counted in stats().rejections, "
                             "logged once per kind", self.what, rk, exc)
        return kind


class Batch:
    """The names of a batch in flight, and those of them invalidated meanwhile."""

    __slots__ = ("order", "names", "dirty")

    def __init__(self, names):
        self.order = names
        self.names = set(names)
        self.dirty = set()

    __eq__ = object.__eq__  # list.remove must find this very batch
    __hash__ = object.__hash__


def batch_keys(keys):
    """Return `keys` as a list; a str or bytes is refused, as the engine's get_many does, not split."""
    if isinstance(keys, (str, bytes, bytearray)):
        raise TypeError("keys must be an iterable of keys, not a str or bytes")
    return list(keys)


class TierCore(TieredBase):
    """The state and the non-I/O steps every remote tier shares.

    A backend sets ``backend`` (its name, for messages), ``CircuitOpenError`` (raised in strict
    mode while a breaker is open), ``ValueTooLargeError`` and ``too_large_why``.
    """

    backend = "the server"
    CircuitOpenError: type[Exception] = ConnectionError
    ValueTooLargeError: type[Exception] = ValueError
    too_large_why = "the server's limit"

    def _setup_core(
        self, local, client, namespace, ttl, serializer, compress_over, strict, lock_lease, lock_wait,
        max_value_size, health, encryption_key=None,
    ):
        """Check the arguments every tier takes and set up the state they all keep."""
        self._cipher = None if encryption_key is None else Cipher(encryption_key)
        if serializer is not None and compress_over is not None:
            raise ValueError("give compress_over to the serializer, not both")
        if ttl is not None and not ttl > 0:
            raise ValueError("ttl must be > 0 or None")
        if not lock_lease > 0:
            raise ValueError("lock_lease must be > 0")
        if isinstance(namespace, str):
            namespace = namespace.encode()
        if not isinstance(namespace, bytes) or not namespace:
            raise TypeError("namespace must be a non-empty str or bytes")
        # The local tier, the live flag and the local-hit counter live in the compiled base:
        # __getitem__, get and __contains__ answer a local hit there (kvcache/_tiered.pyx).
        self._bind_local(local)
        self._client = client
        self.namespace = namespace
        self.ttl = ttl
        self.strict = bool(strict)
        self.lock_lease = float(lock_lease)
        self.lock_wait = float(lock_wait)
        if not max_value_size > 0:
            raise ValueError("max_value_size must be > 0")
        self.max_value_size = int(max_value_size)
        self._ser = serializer if serializer is not None else Serializer(compress_over=compress_over)
        self._prefix = namespace_prefix(namespace)
        self._health = health

        # Fill bookkeeping, guarded by _lock: a fill or write-through stores its
        # copy only if _epoch did not move and its name was not marked dirty.
        # Reentrant: storing into `local` may run the user's on_evict, which may
        # call back into this tier.
        self._lock = threading.RLock()
        self._epoch = 0
        self._inflight = {}  # remote name -> [readers in flight, dirty]
        self._batches = []  # _Batch in flight
        self._waiters = {}  # remote name -> Event woken by any change of name or its lock
        self._live = False
        self._counts = [0] * 7  # remote_hits misses sets deletes errors invalidations rejections
        self._stream_error = None
        self._owns_client = False
        self._stream_error = None
        self._owns_client = False

    def _error(self, exc, breaker):
        """Count `exc` (an outage or a rejection; `breaker` is the node's, or None); raise when strict."""
        self._count_error(exc, breaker)
        if self.strict:
            raise exc

    def _count_error(self, exc, breaker):
        if isinstance(exc, SerializationError) or breaker is None:
            self._counts[4] += 1
        elif self._health.record(exc, breaker) is OUTAGE:
            self._counts[4] += 1
        else:
            self._counts[6] += 1

    def _too_large(self, key, blob):
        """Return a ValueTooLargeError if `blob` may not be sent, else None."""
        if len(blob) > self.max_value_size:
            return self.ValueTooLargeError(
                f"value of {key!r} is too large: it encodes to {len(blob)} bytes, over "
                f"max_value_size={self.max_value_size} ({self.too_large_why})")
        return None

    def _blocked(self, breaker):
        """Return True (or raise when strict) if `breaker` keeps us off its node."""
        if breaker.allow():
            return False
        if self.strict:
            raise self.CircuitOpenError(f"circuit open: {self.backend} failed repeatedly, retrying after backoff")
        return True

    def _begin(self, name):
        with self._lock:
            slot = self._inflight.get(name)
            if slot is None:
                self._inflight[name] = [1, False]
            else:
                slot[0] += 1
            return self._epoch

    def _end(self, name, epoch, key, entry):
        """Finish an in-flight operation; store `entry` locally if still valid."""
        with self._lock:
            slot = self._inflight[name]
            dirty = slot[1] or epoch != self._epoch
            slot[0] -= 1
            if not slot[0]:
                del self._inflight[name]
            if entry is not _MISSING:
                if dirty:
                    self._local.pop(key, None)
                else:
                    self._local[key] = entry

    def _begin_many(self, names):
        """Mark `names` in flight as one batch; return the token to hand to _end_many."""
        batch = Batch(names)
        with self._lock:
            self._batches.append(batch)
            return self._epoch, batch

    def _end_many(self, token, keys, entries):
        """Finish a batch; store each entry (not MISSING) locally if no invalidation raced it."""
        epoch, batch = token
        local = self._local
        with self._lock:
            self._batches.remove(batch)
            if epoch != self._epoch:
                dirty = None  # everything
            else:
                dirty = batch.dirty
            for name, key, entry in zip(batch.order, keys, entries):
                if entry is not _MISSING:
                    if dirty is None or name in dirty:
                        local.pop(key, None)
                    else:
                        local[key] = entry

    def _ttl(self, ttl):
        """Return the TTL a write uses (`ttl` checked, or the tier's default)."""
        if ttl is _DEFAULT:
            return self.ttl
        if ttl is not None and not ttl > 0:
            raise ValueError("ttl must be > 0 or None")
        return ttl

    def _fallback(self, key):
        """Fail-open read: the live local copy of `key` (counted as a local hit), else a miss."""
        v = self._local_fallback(key)
        if v is _MISSING:
            self._counts[1] += 1
        return v

    def _waiter(self, name, make):
        """Return the event woken by changes of `name` or its lock (made by `make` if none)."""
        with self._lock:
            ev = self._waiters.get(name)
            if ev is None:
                ev = self._waiters[name] = make()
            return ev

    def _drop_waiter(self, name, ev):
        with self._lock:
            if self._waiters.get(name) is ev:
                del self._waiters[name]

    # --- misc ------------------------------------------------------------------

    @property
    def local(self):
        """The local tier."""
        return self._local

    @property
    def client(self):
        """The client the tier was given."""
        return self._client

    def stats(self):
        """Return a :class:`TierStats` snapshot of the counters."""
        c = self._counts
        return TierStats(
            self._local_hits, c[0], c[1], c[2], c[3], c[4], c[5], self._health.state, self._live, c[6],
            self._stream_error,
        )

    @property
    def live(self):
        """Whether invalidations are flowing (the local tier is trusted)."""
        return self._live

    def __reduce__(self):
        raise TypeError(f"{type(self).__name__} cannot be pickled: it holds {self.backend} clients")

    def __repr__(self):
        return (
            f"{type(self).__name__}({self._local!r}, namespace={self.namespace!r}, "
            f"ttl={self.ttl!r}, strict={self.strict!r})"
        )

    def _seal(self, blob, name):
        """Return `blob` encrypted and bound to `name` (namespace and key) if the tier has a key."""
        return blob if self._cipher is None else self._cipher.seal(blob, name)

    def _open(self, blob, name):
        """Return the plaintext of what `_seal` made for `name`; raise SignatureError if it is not that."""
        return blob if self._cipher is None else self._cipher.open(blob, name)

    def _mark_dirty(self, name):
        """Keep what operations in flight on `name` read out of the local tier (hold _lock)."""
        slot = self._inflight.get(name)
        if slot is not None:
            slot[1] = True
        for batch in self._batches:
            if name in batch.names:
                batch.dirty.add(name)
