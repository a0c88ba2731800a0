"""A two-level cache: any kvcache cache in front of Memcached (one node or several).

Memcached pushes no invalidation, so a local copy is trusted for a bounded time only:

* Every value in Memcached has a CAS token, which Memcached changes on every write.  A local
  copy carries the token it was read (or revalidated) with, and a *trust window*: with
  ``consistency="eventual"`` the local tier answers for ``max_stale`` seconds, counted from
  before the request that read or revalidated it, with no round trip.  The first read after the
  window revalidates in one round trip: ``mg <key> c`` (a meta get returning the CAS alone, not
  the value); an unchanged token renews the window, a changed one refetches the value (``gets``),
  a missing key is a miss.  So a write in any process is seen by every other process at most
  ``max_stale`` seconds (plus one round trip) after it returned.
* ``consistency="strong"``: the window is empty.  Every read goes to Memcached, which answers
  with the CAS alone when the local copy is still current (the value stays local), so no read
  started after a write returned sees an older value.  When a node cannot be reached a strong
  tier serves no local copy (a miss, or an error with ``strict=True``).
* A value's TTL travels inside its frame (as an absolute deadline), so a copy filled by a reader
  expires when the writer's did, whatever the trust window.

Keys are spread over the nodes by rendezvous hashing.  The placement never depends on node
health: a dead node's keys fail open (its breaker opens; reads miss or answer from the local
tier, writes leave no local copy) while the other nodes' keys are served as before, and the
breaker's half-open probe brings the node back by itself.  Moving a dead node's keys to other
nodes and back would serve stale values when it returns.

Memcached names are digests of the namespace and the key (Memcached keys are short ASCII
without spaces); a namespace cannot be listed, so ``len()``, iteration and ``clear()`` raise.
"""

import binascii
import hashlib
import logging
import math
import os
import struct
import threading
import time
from collections.abc import MutableMapping

from murmurhash.mrmr import hash as _murmur
from pymemcache.client.base import Client, PooledClient
from pymemcache.client.hash import HashClient
from pymemcache.exceptions import MemcacheError, MemcacheUnexpectedCloseError

from kvcache._remote import DEFAULT as _DEFAULT, OUTAGE, REJECTION, NodeHealth, TierCore, TierStats, batch_keys
from kvcache._tiered import MISSING as _MISSING, Expiring
from kvcache.serialize import Cipher, SerializationError, encode_key, encode_keys

__all__ = ["TieredCache", "TierStats", "CircuitOpenError", "ValueTooLargeError"]

_monotonic = time.monotonic
_INF = float("inf")
# What a Memcached call may raise that fail-open absorbs (an undecodable value is counted where
# it is decoded, as a miss).
_MC_ERRORS = (MemcacheError, OSError)
# Memcached reads a relative expiry over 30 days as a Unix time.
_MAX_RELATIVE = 30 * 24 * 3600
_HEAD = struct.Struct("<d")  # the value's wall-clock expiry (0: none), before its serialized bytes


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _digest(data):
    # base64.urlsafe_b64encode's bytes, without its two Python-level calls (one per key of a batch).
    return binascii.b2a_base64(hashlib.blake2b(data, digest_size=18).digest(), newline=False).translate(_URLSAFE)


class _Node:
    """One Memcached server: its client, its breaker, its rendezvous seed."""

    __slots__ = ("client", "name", "seed", "breaker", "lock")

    def __init__(self, client):
        self.client = client
        server = client.server
        self.name = f"{server[0]}:{server[1]}" if isinstance(server, tuple) else str(server)
        self.seed = int.from_bytes(hashlib.blake2b(self.name.encode(), digest_size=4).digest(), "little")
        self.breaker = None
        # A plain pymemcache Client owns one socket and is not thread-safe; a PooledClient is.
        self.lock = None if isinstance(client, PooledClient) else threading.Lock()

    def call(self, method, *args, **kwargs):
        fn = getattr(self.client, method)
        if self.lock is None:
            return fn(*args, **kwargs)
        with self.lock:
            return fn(*args, **kwargs)


class CircuitOpenError(ConnectionError):
    """Raised in strict mode while a node's circuit breaker keeps it out of reach."""


class ValueTooLargeError(ValueError):
    """Raised (strict mode) for a value whose frame exceeds the tier's ``max_value_size``."""


class _Health(NodeHealth):
    """NodeHealth over Memcached nodes: what a pymemcache error means."""

    what = "Memcached"
    log = logging.getLogger("kvcache.memcached")

    def classify(self, exc):
        # pymemcache reports a connection closed under it with its own type, not OSError;
        # SERVER_ERROR (out of memory, too large) and CLIENT_ERROR are answers: the node is up.
        return OUTAGE if isinstance(exc, (OSError, MemcacheUnexpectedCloseError)) else REJECTION


def _clients(client, timeout):
    """Return (list of pymemcache clients, whether we made them) for what the user passed."""
    if isinstance(client, HashClient):
        return list(client.clients.values()), False
    if isinstance(client, (Client, PooledClient)):
        return [client], False
    if isinstance(client, (str, bytes)) or not hasattr(client, "__iter__"):
        raise TypeError(
            "client must be a pymemcache Client, PooledClient, HashClient or a list of server "
            f"addresses ('host:port' or (host, port)), not {type(client).__name__}"
        )
    made = []
    for addr in client:
        if isinstance(addr, str):
            host, _, port = addr.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"server address {addr!r} is not 'host:port'")
            addr = (host, int(port))
        made.append(PooledClient(tuple(addr), connect_timeout=timeout, timeout=timeout, no_delay=True))
    if not made:
        raise ValueError("give at least one Memcached server")
    return made, True


class TieredCache(TierCore, MutableMapping):
    """Cache values locally in `local` (any kvcache cache) and shared in Memcached.

    ``client`` is a pymemcache ``Client``/``PooledClient`` (one node), a ``HashClient`` (its
    nodes; kvcache does its own placement) or a list of addresses (``"host:port"`` or
    ``(host, port)``: the tier makes thread-safe clients that give up after `timeout` seconds
    and closes them in :meth:`close`).  Keep a passed client's timeouts short: a fail-open tier
    that blocks for seconds per call helps nobody.

    ``consistency="eventual"``: a write is seen everywhere within ``max_stale`` seconds (local
    hits cost no round trip); ``"strong"``: every read is validated by one small round trip and
    none is stale.  See the module docstring for the mechanism.  ``encryption_key`` (a key or a
    list, newest first) encrypts every value with AES-GCM bound to the namespace and the key:
    a tampered or foreign value is a miss (an error with ``strict=True``).  ``ttl`` (seconds)
    is the default lifetime; Memcached counts it in whole seconds, the local tier exactly.
    Values go through `serializer` (default: :class:`~kvcache.serialize.Serializer`).

    Fail-open by default, with a breaker per node, as :class:`kvcache.redis.TieredCache`.
    ``get_or_set`` computes a missing key in one process at a time (an ``add`` lease, renewed
    while `compute` runs).  Memcached cannot list a namespace: ``len()``, iteration and
    ``clear()`` raise TypeError.

    Thread-safety: all methods may be called from many threads at once.
    """

    backend = "Memcached"
    CircuitOpenError = CircuitOpenError
    ValueTooLargeError = ValueTooLargeError
    too_large_why = "memcached refuses items over its -I item size, 1 MiB by default"

    def __init__(
        self,
        local,
        client,
        namespace,
        *,
        consistency="eventual",
        max_stale=1.0,
        encryption_key=None,
        ttl=None,
        serializer=None,
        compress_over=None,
        strict=False,
        timeout=0.25,
        lock_lease=10.0,
        lock_wait=30.0,
        failure_threshold=3,
        backoff=0.05,
        max_backoff=5.0,
        max_value_size=1024 * 1024 - 1024,
    ):
        if consistency not in ("eventual", "strong"):
            raise ValueError('consistency must be "eventual" or "strong"')
        if not (isinstance(max_stale, (int, float)) and 0 <= max_stale < _INF):
            raise ValueError("max_stale must be a finite number of seconds >= 0")
        if not timeout > 0:
            raise ValueError("timeout must be > 0")
        if encryption_key is not None:
            Cipher(encryption_key)  # a bad key fails before any client is made
        clients, owns = _clients(client, timeout)
        nodes = [_Node(c) for c in clients]
        if len({n.name for n in nodes}) != len(nodes):
            raise ValueError("the same Memcached server is given twice")
        health = _Health(failure_threshold, backoff, max_backoff)
        for n in nodes:
            n.breaker = health.node(n.name)
        self._setup_core(
            local, client, namespace, ttl, serializer, compress_over, strict, lock_lease, lock_wait,
            max_value_size, health, encryption_key,
        )
        self._nodes = nodes
        self._owns_client = owns
        self.consistency = consistency
        self.max_stale = float(max_stale)
        self._strong = consistency == "strong"
        self._trust = 0.0 if self._strong else self.max_stale
        self._live = True  # no stream to wait for: trust windows decide what the local tier answers

    # --- names and placement ------------------------------------------------------------------

    def _names(self, key):
        """Return (encoded key, Memcached name of its value) for `key`."""
        ekey = encode_key(key)
        return ekey, b"kv:" + _digest(self._prefix + ekey)

    def _names_many(self, keys):
        """`_names` of each of `keys`."""
        prefix = self._prefix
        return [(ekey, b"kv:" + _digest(prefix + ekey)) for ekey in encode_keys(keys)]

    def _lock_name(self, name):
        return b"kl:" + name[3:]

    def node_of(self, key):
        """Return ``"host:port"`` of the node holding `key` (rendezvous hashing)."""
        return self._route(self._names(key)[1]).name

    def _route(self, name):
        nodes = self._nodes
        if len(nodes) == 1:
            return nodes[0]
        # Highest random weight: adding a node moves only the keys it wins, about 1/n of them.
        return max(nodes, key=lambda n: _murmur(name, seed=n.seed) & 0xFFFFFFFF)

    # --- frames -------------------------------------------------------------------------------

    def _encode(self, value, ekey, ttl):
        frame = _HEAD.pack(0.0 if ttl is None else time.time() + ttl) + self._ser.dumps(value)
        return self._seal(frame, self._prefix + ekey)

    def _decode(self, stored, ekey, t0):
        """Return (value, monotonic deadline of its TTL); (_MISSING, 0) if it expired.

        Raises SerializationError (SignatureError: tampered, foreign or not encrypted).
        """
        stored = self._open(stored, self._prefix + ekey)
        if len(stored) < _HEAD.size:
            raise SerializationError("truncated value")
        (expiry,) = _HEAD.unpack_from(stored)
        hard = _INF
        if expiry:
            left = expiry - time.time()
            if left <= 0:
                return _MISSING, 0.0
            hard = t0 + left
        return self._ser.loads(stored[_HEAD.size :]), hard

    def _expire(self, ttl):
        if ttl is None:
            return 0
        seconds = max(1, math.ceil(ttl))
        return seconds if seconds <= _MAX_RELATIVE else int(time.time()) + seconds

    # --- writes and the fill guard ---------------------------------------------------------

    def _wrote(self, names, keys, entries):
        """Leave what writes of `names` did: each entry (or no copy), and no copy read meanwhile.

        Called once the writes returned: a read still in flight may have read the value a
        write replaced, and a read that starts now sees the write.
        """
        with self._lock:
            for name, key, entry in zip(names, keys, entries):
                self._mark_dirty(name)
                if entry is _MISSING:
                    self._local.pop(key, None)
                else:
                    self._local[key] = entry

    # --- reads --------------------------------------------------------------------------------

    # __getitem__, get and __contains__ are compiled (TieredBase): a copy inside its trust
    # window answers there; everything else comes here.

    def _fetch(self, key):
        """Read `key` the local tier did not answer: revalidate or read Memcached; or _MISSING."""
        ekey, name = self._names(key)
        node = self._route(name)
        entry = self._local.get(key, _MISSING)
        if self._blocked(node.breaker):
            return self._stale(key, entry)
        try:
            if type(entry) is Expiring and entry.token is not None and entry.token[0] is not None:
                v = self._revalidate(key, name, node, entry)
                if v is not _CHANGED:
                    return v
            return self._remote_get(key, ekey, name, node)
        except _MC_ERRORS as exc:
            self._error(exc, node.breaker)
        return self._stale(key, entry)

    def _revalidate(self, key, name, node, entry):
        """Check the CAS of a local copy (one small round trip): its value, _MISSING, or _CHANGED."""
        epoch = self._begin(name)
        renewed = _MISSING
        try:
            t0 = _monotonic()
            line = node.call("raw_command", b"mg " + name + b" c")
            node.breaker.success()
            if line == b"EN":
                self._local.pop(key, None)
                self._counts[1] += 1
                return _MISSING
            cas, hard = entry.token
            if b"c%d" % cas not in line.split()[1:] or hard <= t0:
                return _CHANGED
            self._count_local_hit()
            if not self._strong:
                renewed = Expiring(entry.value, min(t0 + self._trust, hard), entry.token)
            return entry.value
        finally:
            self._end(name, epoch, key, renewed)

    def _remote_get(self, key, ekey, name, node):
        """Return the value from Memcached (filling local) or _MISSING; may raise."""
        epoch = self._begin(name)
        entry = _MISSING
        try:
            t0 = _monotonic()
            stored, cas = node.call("gets", name)
            node.breaker.success()
            value, entry = self._filled(key, ekey, stored, cas, t0)
            return value
        finally:
            self._end(name, epoch, key, entry)

    def _filled(self, key, ekey, stored, cas, t0):
        """Decode what Memcached returned for `key` read at `t0`: (value, local entry), or _MISSING twice."""
        entry = value = _MISSING
        if stored is not None:
            try:
                value, hard = self._decode(stored, ekey, t0)
            except SerializationError as exc:
                self._local.pop(key, None)
                self._error(exc, None)
                value = _MISSING
            else:
                if value is not _MISSING:
                    entry = Expiring(value, min(t0 + self._trust, hard), (int(cas), hard))
        if value is _MISSING:
            self._local.pop(key, None)
            self._counts[1] += 1
        else:
            self._counts[0] += 1
        return value, entry

    def _filled_many(self, keys, ekeys, got, t0):
        """Return ``[_filled(key, ekey, stored, cas, t0)]`` for each; valid plain frames decoded in one pass."""
        loads_many = getattr(self._ser, "loads_many", None)  # a serializer of the user's may lack it
        size = _HEAD.size
        if loads_many is not None and self._cipher is None:
            frames, pos = [], []
            for j, (stored, _) in enumerate(got):
                if stored is not None:
                    if len(stored) < size:
                        break
                    frames.append(stored[size:])
                    pos.append(j)
            else:
                try:
                    decoded = loads_many(frames)
                except SerializationError:
                    decoded = None  # the one by one path counts (or raises) it as _filled does
                if decoded is not None:
                    return self._entries(keys, got, pos, decoded, t0)
        return [self._filled(k, e, stored, cas, t0) for k, e, (stored, cas) in zip(keys, ekeys, got)]

    def _entries(self, keys, got, pos, decoded, t0):
        """`_filled_many`'s results from the `decoded` values of the frames at `pos` in `got`."""
        out = [(_MISSING, _MISSING)] * len(keys)
        now = time.time()
        trust = t0 + self._trust
        unpack = _HEAD.unpack_from
        for j, value in zip(pos, decoded):
            stored, cas = got[j]
            (expiry,) = unpack(stored)
            hard = _INF
            if expiry:
                left = expiry - now
                if left <= 0:
                    continue  # expired: a miss, as _decode says
                hard = t0 + left
            out[j] = (value, Expiring(value, min(trust, hard), (int(cas), hard)))
        pop = self._local.pop
        misses = 0
        for key, (value, _) in zip(keys, out):
            if value is _MISSING:
                pop(key, None)
                misses += 1
        self._counts[0] += len(keys) - misses
        self._counts[1] += misses
        return out

    def _stale(self, key, entry):
        """Fail-open read: an eventual tier's local copy while its TTL lasts, else a miss."""
        if not self._strong and type(entry) is Expiring and entry.token is not None:
            if entry.token[1] > _monotonic():
                self._count_local_hit()
                return entry.value
            self._local.pop(key, None)
        self._counts[1] += 1
        return _MISSING

    def get_many(self, keys, default=None):
        """Return a list with ``get(key, default)`` for each key.

        Copies inside their trust window answer locally; the rest are read with one multi-get
        (``gets``) per node.
        """
        keys = batch_keys(keys)
        out = [self._local_hit(k) for k in keys]
        todo = [i for i, v in enumerate(out) if v is _MISSING]
        if todo:
            got = self._fetch_many([keys[i] for i in todo])
            for i, v in zip(todo, got):
                out[i] = v
        return [default if v is _MISSING else v for v in out]

    def _fetch_many(self, keys):
        named = self._names_many(keys)
        out = [_MISSING] * len(keys)
        for node, idx in self._groups(named):
            gnames = [named[i][1] for i in idx]
            done = False
            if not self._blocked(node.breaker):
                token = self._begin_many(gnames)
                entries = [_MISSING] * len(idx)
                try:
                    t0 = _monotonic()
                    found = node.call("gets_many", gnames)
                    node.breaker.success()
                    got = [found.get(n, _ABSENT) for n in gnames]
                    filled = self._filled_many([keys[i] for i in idx], [named[i][0] for i in idx], got, t0)
                    for j, i in enumerate(idx):
                        out[i], entries[j] = filled[j]
                    done = True
                except _MC_ERRORS as exc:
                    self._error(exc, node.breaker)
                finally:
                    self._end_many(token, [keys[i] for i in idx], entries)
            if not done:
                for i in idx:
                    out[i] = self._stale(keys[i], self._local.get(keys[i], _MISSING))
        return out

    def _groups(self, named):
        """Group indexes of `named` (encoded key, name) by node: [(node, [i, ...])]."""
        if len(self._nodes) == 1:
            return [(self._nodes[0], list(range(len(named))))]
        groups = {}
        for i, (_, name) in enumerate(named):
            node = self._route(name)
            groups.setdefault(id(node), (node, []))[1].append(i)
        return list(groups.values())

    # --- writes -------------------------------------------------------------------------------

    def __setitem__(self, key, value):
        self.set(key, value)

    def set(self, key, value, ttl=_DEFAULT):
        """Store `value` in Memcached and locally; `ttl` (seconds) overrides the default.

        Raises TypeError for a value the serializer cannot represent.  A write Memcached did
        not take (down, breaker open, rejected, too large) leaves no local copy either.
        """
        ttl = self._ttl(ttl)
        ekey, name = self._names(key)
        frame = self._encode(value, ekey, ttl)
        node = self._route(name)
        entry = _MISSING
        try:
            too_large = self._too_large(key, frame)
            if too_large is not None:
                self._error(too_large, node.breaker)
            elif not self._blocked(node.breaker):
                try:
                    t0 = _monotonic()
                    node.call("set", name, frame, expire=self._expire(ttl), noreply=False)
                    entry = self._written(value, ttl, t0, node)
                except _MC_ERRORS as exc:
                    self._error(exc, node.breaker)
        finally:
            self._wrote((name,), (key,), (entry,))

    def _written(self, value, ttl, t0, node):
        """Account a write Memcached took at `t0`; return the local entry it leaves."""
        node.breaker.success()
        self._counts[2] += 1
        hard = _INF if ttl is None else t0 + ttl
        # The new CAS is unknown (set does not return it): the first revalidation refetches.
        return Expiring(value, min(t0 + self._trust, hard), (None, hard))

    def set_many(self, keys, values, ttl=_DEFAULT):
        """Store ``values[i]`` under ``keys[i]`` for every i, one round trip per node.

        Every value is serialized before anything is sent (bad input changes nothing); each
        write Memcached did not take leaves no local copy.
        """
        keys = batch_keys(keys)
        values = list(values)
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys but {len(values)} values")
        ttl = self._ttl(ttl)
        named = self._names_many(keys)
        frames = [self._encode(v, ekey, ttl) for v, (ekey, _) in zip(values, named)]
        if not keys:
            return
        names = [name for _, name in named]
        entries = [_MISSING] * len(keys)
        first_error = None
        try:
            for node, idx in self._groups(named):
                send = []
                for i in idx:
                    exc = self._too_large(keys[i], frames[i])
                    if exc is None:
                        send.append(i)
                    else:
                        self._count_error(exc, node.breaker)
                        first_error = first_error or exc
                idx = send
                if not idx or self._blocked(node.breaker):
                    continue
                try:
                    t0 = _monotonic()
                    failed = node.call(
                        "set_many", {named[i][1]: frames[i] for i in idx}, expire=self._expire(ttl), noreply=False
                    )
                except _MC_ERRORS as exc:
                    self._error(exc, node.breaker)
                    continue
                failed = set(failed)
                for i in idx:
                    if named[i][1] not in failed:
                        entries[i] = self._written(values[i], ttl, t0, node)
        finally:
            self._wrote(names, keys, entries)
        if first_error is not None and self.strict:
            raise first_error

    def __delitem__(self, key):
        if not self.delete(key):
            raise KeyError(key)

    def delete(self, key):
        """Remove `key` from Memcached and locally; return whether it existed."""
        _, name = self._names(key)
        node = self._route(name)
        existed = False
        try:
            existed = self._local.pop(key, _MISSING) is not _MISSING
            if not self._blocked(node.breaker):
                try:
                    existed = bool(node.call("delete", name, noreply=False)) or existed
                    node.breaker.success()
                    self._counts[3] += 1
                except _MC_ERRORS as exc:
                    self._error(exc, node.breaker)
        finally:
            self._wrote((name,), (key,), (_MISSING,))
        return existed

    def delete_many(self, keys):
        """Remove `keys` from Memcached (one round trip per node) and locally."""
        keys = batch_keys(keys)
        named = self._names_many(keys)
        names = [name for _, name in named]
        try:
            for node, idx in self._groups(named):
                if self._blocked(node.breaker):
                    continue
                try:
                    node.call("delete_many", [named[i][1] for i in idx], noreply=False)
                    node.breaker.success()
                    self._counts[3] += len(idx)
                except _MC_ERRORS as exc:
                    self._error(exc, node.breaker)
        finally:
            self._wrote(names, keys, [_MISSING] * len(keys))

    def _unlistable(self, *args):
        raise TypeError(
            "Memcached cannot list the keys of a namespace: len(), iteration and clear() are not "
            "available on kvcache.memcached.TieredCache (use a new namespace, or delete_many)"
        )

    __iter__ = __len__ = clear = _unlistable

    # --- single flight across processes -------------------------------------------------------

    def get_or_set(self, key, compute, ttl=_DEFAULT):
        """Return the value of `key`, computing it with ``compute()`` if missing.

        Across processes only the holder of a lease (Memcached ``add``) computes; the lease is
        renewed while `compute` runs and released by token.  Others poll for the value up to
        `lock_wait` seconds, then compute themselves; a crashed holder blocks no one past
        `lock_lease` seconds (rounded up to whole seconds: Memcached's expiry unit).
        """
        v = self.get(key, _MISSING)
        if v is not _MISSING:
            return v
        _, name = self._names(key)
        node = self._route(name)
        lname = self._lock_name(name)
        token = os.urandom(16).hex().encode()
        lease = max(1, math.ceil(self.lock_lease))
        give_up = _monotonic() + self.lock_wait
        while True:
            if self._blocked(node.breaker):
                return self._compute_and_set(key, compute, ttl)
            try:
                acquired = node.call("add", lname, token, expire=lease, noreply=False)
                node.breaker.success()
            except _MC_ERRORS as exc:
                self._error(exc, node.breaker)
                return self._compute_and_set(key, compute, ttl)
            if acquired:
                return self._compute_locked(key, lname, token, lease, node, compute, ttl)
            if _monotonic() >= give_up:
                return self._compute_and_set(key, compute, ttl)
            time.sleep(0.02)  # Memcached cannot notify: poll for the holder's value
            v = self.get(key, _MISSING)
            if v is not _MISSING:
                return v

    def _compute_and_set(self, key, compute, ttl):
        value = compute()
        self.set(key, value, ttl)
        return value

    def _compute_locked(self, key, lname, token, lease, node, compute, ttl):
        stop = threading.Event()
        try:
            # The previous holder may have finished between our miss and our lease.
            v = self.get(key, _MISSING)
            if v is not _MISSING:
                return v
            renewer = threading.Thread(target=_renew, args=(node, lname, token, lease, stop), daemon=True)
            renewer.start()
            try:
                value = compute()
            finally:
                stop.set()
                renewer.join()
            self.set(key, value, ttl)
            return value
        finally:
            try:
                _release(node, lname, token)
            except _MC_ERRORS as exc:
                self._error(exc, node.breaker)

    # --- misc ---------------------------------------------------------------------------------

    @property
    def nodes(self):
        """The ``"host:port"`` names of the nodes, in the order given."""
        return [n.name for n in self._nodes]

    def close(self):
        """Close the clients the tier made from addresses (a passed client stays the caller's)."""
        if self._owns_client:
            self._owns_client = False
            for node in self._nodes:
                node.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (
            f"{type(self).__name__}({self._local!r}, namespace={self.namespace!r}, nodes={self.nodes!r}, "
            f"consistency={self.consistency!r}, max_stale={self.max_stale!r}, ttl={self.ttl!r})"
        )


_CHANGED = object()
_ABSENT = (None, None)


def _held(node, lname, token):
    """Return the CAS of the lease `lname` if `token` holds it, else None."""
    stored, cas = node.call("gets", lname)
    return cas if stored == token else None


def _release(node, lname, token):
    """Delete the lease only if `token` still holds it (a compare-and-delete on its CAS)."""
    cas = _held(node, lname, token)
    if cas is not None:
        node.call("raw_command", b"md " + lname + b" C" + cas)


def _renew(node, lname, token, lease, stop):
    """Extend the lease every third of it until `stop`; give up once it is lost."""
    while not stop.wait(lease / 3.0):
        try:
            cas = _held(node, lname, token)
            if cas is None or not node.call("cas", lname, token, cas, expire=lease, noreply=False):
                return
        except _MC_ERRORS:
            continue
