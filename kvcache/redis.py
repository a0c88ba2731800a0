"""A two-level cache: any kvcache cache in front of Redis (or Redis Cluster).

Invalidation uses ``CLIENT TRACKING`` in broadcast mode (BCAST) rather than
application-level pub/sub.  For each Redis primary the tier keeps one
dedicated connection that enables tracking for the namespace prefix with
``REDIRECT`` to itself and subscribes to ``__redis__:invalidate``.  The server
then reports every change to a key of the namespace, whoever makes it:
another process of ours, a ``redis-cli``, ``EXPIRE``, eviction under
``maxmemory`` or ``FLUSHDB``.  Pub/sub would only see writers that remember to
publish, would cost every write a second round trip, and a writer dying
between its ``SET`` and its ``PUBLISH`` would leave stale copies forever.

Consistency rules (why the code looks the way it does):

* A copy is put into the local tier only if no invalidation of that key (and
  no reconnection) happened while it was being read from or written to Redis;
  otherwise the copy could be older than the invalidation that already went by.
* While the invalidation stream is down the local tier is *suspect*: reads go
  to Redis first and the local tier only answers when Redis cannot (fail-open).
  When the stream comes back the local tier is cleared, since any message
  sent meanwhile was lost, and only then trusted again.
* A write Redis did not take (unreachable, breaker open, refused, timed out
  and so maybe applied later) leaves no local copy: every process, the writer
  included, converges on what Redis holds.
* Outages and refusals differ: a connection-level failure opens the breaker of
  the node serving the key (one per cluster primary, so a dead master fails
  open only its slots); a server's answer (OOM, NOPERM, WRONGTYPE) proves the
  node is up and is counted, logged and, in strict mode, raised.
* ``consistency="strong"``: invalidation is asynchronous (a notice may arrive after a write
  in another process returned), so a strong tier never lets the local tier answer alone.  Its
  local copies carry the SHA-1 of the frame they were read or written as, and every read runs
  ``_LUA_CHECK``: the value travels only if Redis holds another frame.  A copy Redis cannot
  confirm (unreachable) is not served.
* ``wait_replicas``: WAIT counts the writes of the connection it runs on, so it is sent in the
  same pipeline as the write, never on another pooled connection.
* Batches (get_many, set_many, delete_many) follow the same rules, key by key,
  with one script call per node and 1,000 keys (per hash slot on a cluster).
* A local copy never outlives its Redis TTL: entries with a TTL are stored
  locally together with a monotonic deadline (``SET ... PX`` for our writes,
  ``PTTL`` read atomically with the value for fills), so this works with any
  kvcache cache as ``local`` whether or not it supports per-entry TTLs.

Two tiers, one logic: ``TieredCache`` (blocking, threads) and ``AsyncTieredCache``
(asyncio) share ``_TierCore``, where every operation is written once as a
generator of *steps* that yields the I/O it needs (``("_set", name, blob, px)``,
``("_eval", script, keys, args)``, ...) and is sent the result.  ``_drive`` runs
the steps with the blocking tier's methods of those names, ``_adrive`` awaits the
asyncio tier's coroutines; the invalidation stream is a thread or a task over
one ``_handshake``.  A local hit never enters the steps: it is compiled
(``kvcache/_tiered.pyx``).
"""

import asyncio
import functools
import hashlib
import inspect
import logging
import os
import random
import threading
import time
import warnings
import weakref
from collections.abc import MutableMapping

import redis as _redis
from redis.exceptions import RedisError

from kvcache._remote import (
    DEFAULT as _DEFAULT,
    OUTAGE,
    REJECTION,
    Breaker,
    NodeHealth as _NodeHealth,
    TierCore,
    TierStats,
    batch_keys as _batch_keys,
    namespace_prefix,  # noqa: F401  (re-exported: part of this module's interface)
)
from kvcache._tiered import MISSING as _MISSING, AsyncTieredBase, Expiring
from kvcache.serialize import SerializationError, decode_key, encode_key, encode_keys

__all__ = [
    "TieredCache", "AsyncTieredCache", "TierStats", "CircuitOpenError", "ValueTooLargeError",
    "StreamRefusedError", "SlowClientWarning", "ReplicationError",
]

_monotonic = time.monotonic
# What a remote call may raise that fail-open absorbs (cluster topology errors are not RedisErrors).
# redis.asyncio also lets OSError and asyncio's TimeoutError out of some connection paths.
_REMOTE_ERRORS = (
    RedisError, _redis.exceptions.RedisClusterException, SerializationError, OSError, asyncio.TimeoutError,
)



class CircuitOpenError(_redis.exceptions.ConnectionError):
    """Raised in strict mode while the circuit breaker keeps Redis out of reach."""


class StreamRefusedError(_redis.exceptions.ResponseError):
    """Raised (strict mode, at construction) when Redis refuses the invalidation stream."""


class SlowClientWarning(UserWarning):
    """The redis client's timeouts or retries would block callers for seconds while Redis is down."""


# Compare-and-delete / compare-and-extend: a lease is touched only by the
# holder of its token, so a holder whose lease expired cannot free the lock
# of the process that took over.
_LUA_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_LUA_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
# Value and remaining TTL in one atomic step, so a fill carries the TTL the value had.
_LUA_GET = """
local v = redis.call('get', KEYS[1])
if not v then return false end
return {v, redis.call('pttl', KEYS[1])}
"""
# A strong tier's local hit, validated in one round trip: 1 while the stored frame still has the
# digest of the local copy (nothing transferred), else what _LUA_GET returns.
_LUA_CHECK = """
local v = redis.call('get', KEYS[1])
if not v then return false end
if redis.sha1hex(v) == ARGV[1] then return 1 end
return {v, redis.call('pttl', KEYS[1])}
"""
# The same for a batch (per key: false, 1 or the frame; a strong copy's own TTL is never used).
_LUA_MCHECK = """
local out = {}
for i, k in ipairs(KEYS) do
  local v = redis.call('get', k)
  if not v then out[i] = false
  elseif redis.sha1hex(v) == ARGV[i] then out[i] = 1
  else out[i] = v end
end
return out
"""


# The batches, one call per chunk of keys (of one slot on a cluster).  Values with their
# PTTL when they have one ({values, {index, pttl, ...}}), so a fill carries its TTL as in
# _LUA_GET; SET and UNLINK through scripts rather than MSET so the minimal ACL suffices.
_CHUNK = 1000  # keys per call: Lua's unpack() stops near 8,000 arguments
_LUA_MGET = """
local vals = redis.call('mget', unpack(KEYS))
local ttl = {}
for i, v in ipairs(vals) do
  if v then
    local t = redis.call('pttl', KEYS[i])
    if t >= 0 then ttl[#ttl + 1] = i; ttl[#ttl + 1] = t end
  end
end
return {vals, ttl}
"""
_LUA_MSET = """
local px = ARGV[#KEYS + 1]
for i, k in ipairs(KEYS) do
  if px then redis.call('set', k, ARGV[i], 'px', px) else redis.call('set', k, ARGV[i]) end
end
return #KEYS
"""
_LUA_UNLINK = """
return redis.call('unlink', unpack(KEYS))
"""


class _Script:
    """A Lua script run by EVALSHA, falling back to EVAL (which caches it) on NOSCRIPT.

    Not redis-py's Script: that one loads a missing script with SCRIPT LOAD, which on a
    cluster goes to every primary, so one dead master made every key's first script call
    fail; EVAL reaches the key's node only, and needs no ``script|load`` permission.
    ``ro=True`` sends EVALSHA_RO / EVAL_RO (a `readonly` script on a replica) through
    `client`'s ``execute_command``: a single node's client (sync) or ClusterNode (asyncio).
    """

    __slots__ = ("source", "sha", "readonly")

    def __init__(self, source, readonly=False):
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self.readonly = readonly

    def __call__(self, keys=(), args=(), client=None, ro=False):
        if ro:
            try:
                return client.execute_command("EVALSHA_RO", self.sha, len(keys), *keys, *args)
            except _redis.exceptions.NoScriptError:
                return client.execute_command("EVAL_RO", self.source, len(keys), *keys, *args)
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except _redis.exceptions.NoScriptError:
            return client.eval(self.source, len(keys), *keys, *args)

    async def acall(self, keys=(), args=(), client=None, ro=False):
        """Run the script on a ``redis.asyncio`` client (or ClusterNode, with `ro`)."""
        if ro:
            try:
                return await client.execute_command("EVALSHA_RO", self.sha, len(keys), *keys, *args)
            except _redis.exceptions.NoScriptError:
                return await client.execute_command("EVAL_RO", self.source, len(keys), *keys, *args)
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except _redis.exceptions.NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


def _glob_escape(data):
    out = bytearray()
    for b in data:
        if b in b"*?[]\\":
            out += b"\\"
        out.append(b)
    return bytes(out)


def scan_pattern(prefix):
    """Return the SCAN MATCH pattern of every Redis name under `prefix`."""
    return _glob_escape(prefix) + b"*"


# --- what a failure means ----------------------------------------------------------
# An outage (the node cannot be reached or cannot serve) trips that node's breaker; a
# rejection (the server answered "no": OOM, NOPERM, WRONGTYPE, ...) proves the node is up,
# so it is counted and logged instead, and calling again is the right thing to do.

_OUTAGE_TYPES = (
    _redis.exceptions.ConnectionError,  # refused, reset, broken pipe, BusyLoading, auth, pool full
    _redis.exceptions.TimeoutError,
    _redis.exceptions.ClusterError,  # ClusterDown, MasterDown
    _redis.exceptions.ReadOnlyError,  # a primary demoted under us: failover in progress
    _redis.exceptions.InvalidResponse,  # the connection lost sync
    _redis.exceptions.RedisClusterException,  # slots not covered, topology unknown
    OSError,
    asyncio.TimeoutError,  # not an OSError before 3.11
)


class ReplicationError(_redis.exceptions.ResponseError):
    """Raised (strict mode) when fewer than ``wait_replicas`` replicas acknowledged a write in time."""


class ValueTooLargeError(_redis.exceptions.DataError):
    """Raised (strict mode) for a value whose encoding exceeds the tier's ``max_value_size``."""


def classify_error(exc):
    """Return OUTAGE for a connection-level failure, REJECTION for a server's (or our) refusal."""
    return OUTAGE if isinstance(exc, _OUTAGE_TYPES) else REJECTION


def rejection_kind(exc):
    """Return a short name for a rejection (``OOM``, ``NOPERM``, ``WRONGTYPE``, ...)."""
    code = getattr(exc, "status_code", None)
    if code:
        return code
    if type(exc) is _redis.exceptions.ResponseError:
        word = str(exc).split(" ", 1)[0]
        if word.isupper():
            return word
    return type(exc).__name__


_log = logging.getLogger("kvcache.redis")


class _Breaker(Breaker):
    __slots__ = ()
    timeouts = (_redis.exceptions.TimeoutError, TimeoutError)


class NodeHealth(_NodeHealth):
    """One breaker per Redis node, and what to do with an error (sync and async tiers share it).

    On a cluster the breaker of a Redis name is that of the primary serving its slot, so a
    dead master fails open only its own slots.  Works with ``redis.Redis``,
    ``redis.cluster.RedisCluster`` and their ``redis.asyncio`` twins.
    """

    what = "Redis"
    breaker_type = _Breaker
    log = _log

    def __init__(self, client, threshold, base, cap):
        super().__init__(threshold, base, cap)
        self._client = client
        self._cluster = _is_cluster(client)
        self._single = _Breaker(*self._args)

    def classify(self, exc):
        return classify_error(exc)

    def rejection_kind(self, exc):
        return rejection_kind(exc)

    def node(self, node_name):
        """Return the breaker of the node named ``host:port`` (the only one off a cluster)."""
        if not self._cluster:
            return self._single
        return super().node(node_name)

    def breaker(self, name):
        """Return the breaker guarding Redis name `name`."""
        if not self._cluster:
            return self._single
        return self.node(self.node_name(name))

    def node_name(self, name):
        """Return ``host:port`` of the primary serving `name` (``"?"`` if the slot map is unknown)."""
        if not self._cluster:
            return "?"
        c = self._client
        try:
            return c.nodes_manager.slots_cache[c.keyslot(name)][0].name
        except (KeyError, IndexError, TypeError, AttributeError):
            return "?"

    def group(self, names):
        """Return [(breaker, [positions in names])], one item per node serving some of `names`."""
        if not self._cluster:
            return [(self._single, list(range(len(names))))]
        by_node = {}
        for i, n in enumerate(names):
            by_node.setdefault(self.node_name(n), []).append(i)
        return [(self.node(node), pos) for node, pos in by_node.items()]

    def breakers(self):
        """Return every breaker in use."""
        if not self._cluster:
            return [self._single]
        return list(self._nodes.values()) or [self._single]


def _drive(steps, tier):
    """Run steps (see _TierCore) with blocking I/O: each call ``(name, *args)`` they yield is
    ``getattr(tier, name)(*args)``; its result is sent back, its exception thrown in."""
    reply = exc = None
    while True:
        try:
            call = steps.send(reply) if exc is None else steps.throw(exc)
        except StopIteration as stop:
            return stop.value
        try:
            reply, exc = getattr(tier, call[0])(*call[1:]), None
        except BaseException as e:  # raised where the steps made the call: their try blocks decide
            reply, exc = None, e


async def _adrive(steps, tier):
    """Run steps with awaited I/O: each call ``(name, *args)`` is ``await getattr(tier, name)(*args)``."""
    reply = exc = None
    while True:
        try:
            call = steps.send(reply) if exc is None else steps.throw(exc)
        except StopIteration as stop:
            return stop.value
        try:
            reply, exc = await getattr(tier, call[0])(*call[1:]), None
        except BaseException as e:
            reply, exc = None, e


class _TierCore(TierCore):
    """What TieredCache and AsyncTieredCache share beyond kvcache._remote.TierCore: Redis names,
    scripts, invalidation, the listeners' state, and every operation as steps (see the module
    docstring).

    No I/O here: the steps yield it, and each tier performs it (blocking or awaited).
    """

    backend = "Redis"
    CircuitOpenError = CircuitOpenError
    ValueTooLargeError = ValueTooLargeError
    too_large_why = "Redis refuses a value over its proto-max-bulk-len by closing the connection"

    def _setup(
        self, local, client, namespace, ttl, serializer, compress_over, strict, lock_lease, lock_wait,
        failure_threshold, backoff, max_backoff, max_value_size, encryption_key=None,
        consistency="eventual", wait_replicas=0, wait_timeout=1.0,
    ):
        """Check the arguments and set up the state both tiers keep (the constructors call it)."""
        if consistency not in ("eventual", "strong"):
            raise ValueError('consistency must be "eventual" or "strong"')
        if not (isinstance(wait_replicas, int) and not isinstance(wait_replicas, bool) and wait_replicas >= 0):
            raise ValueError("wait_replicas must be an int >= 0")
        if not (isinstance(wait_timeout, (int, float)) and 0 < wait_timeout < float("inf")):
            raise ValueError("wait_timeout must be a finite number of seconds > 0")
        if wait_replicas and _is_cluster(client):
            raise ValueError("wait_replicas needs a redis.Redis client (WAIT runs on the connection "
                             "that wrote; cluster clients are not supported)")
        self._cluster = _is_cluster(client)
        if _connection_kwargs(client).get("decode_responses"):
            raise ValueError("the redis client must be created with decode_responses=False")
        if max_value_size is None:
            max_value_size = _server_max_bulk(client)  # the asyncio tier reads it on start instead
        self._setup_core(
            local, client, namespace, ttl, serializer, compress_over, strict, lock_lease, lock_wait,
            max_value_size, NodeHealth(client, failure_threshold, backoff, max_backoff), encryption_key,
        )
        self._vprefix = self._prefix + b"v:"
        self._lprefix = self._prefix + b"l:"
        self._get_script = _Script(_LUA_GET, readonly=True)
        self._release_script = _Script(_LUA_RELEASE)
        self._renew_script = _Script(_LUA_RENEW)
        self._mget_script = _Script(_LUA_MGET, readonly=True)
        self._mset_script = _Script(_LUA_MSET)
        self._unlink_script = _Script(_LUA_UNLINK)
        self._check_script = _Script(_LUA_CHECK)
        self._mcheck_script = _Script(_LUA_MCHECK)
        self.consistency = consistency
        self._strong = consistency == "strong"
        # A strong read must see the last write: only a primary is sure to hold it.
        self._replica_reads = not self._strong and _reads_replicas(client)
        self._replica_up = {}
        self.wait_replicas = wait_replicas
        self.wait_timeout = float(wait_timeout)


    def _setup_listeners(self, pools, primaries):
        """Set up the state of one invalidation listener per pool: the first `primaries` are the
        primaries' (the tier is live while they all listen), the others replicas' (read from
        only while their own listener is up); _watch_new_primaries appends primaries later."""
        self._pool_nodes = [_pool_node_name(p) for p in pools]
        self._listen_targets = list(pools)
        self._is_replica = [i >= primaries for i in range(len(pools))]
        # A cluster primary's listener follows the primary of a slot it served (its home slot):
        # after a failover it listens to the promoted replica.
        self._home_slots = _home_slots(self._client, self._pool_nodes[:primaries]) if self._cluster else []
        self._home_slots += [None] * (len(pools) - primaries)
        self._watched = frozenset(self._pool_nodes[:primaries])
        self._next_refresh = self._next_watch = 0.0
        self._replica_up = dict.fromkeys(self._pool_nodes[primaries:], False)
        self._listeners_up = [False] * len(pools)
        self._tried = [threading.Event() for _ in pools]  # each listener made its first attempt
        self._listening = bool(pools)

    def _watch_new_primaries(self):
        """Start a listener for each primary the cluster gained since the tier was built (slots
        resharded to a new node), at most once a second; the tier is not live until it is up."""
        now = _monotonic()
        if now < self._next_watch or not self._listening:
            return
        self._next_watch = now + 1.0
        try:
            new = [n for n in self._client.get_primaries() if n.name not in self._watched]
        except _REMOTE_ERRORS:
            return
        for node in new:
            with self._lock:
                if node.name in self._watched:
                    continue
                index = len(self._pool_nodes)
                self._pool_nodes.append(node.name)
                self._listen_targets.append(self._target_of(node))
                self._is_replica.append(False)
                self._home_slots.append(_home_slots(self._client, [node.name])[0])
                self._listeners_up.append(False)
                self._tried.append(threading.Event())
                self._watched = self._watched | {node.name}
                self._live = False
            self._spawn_listener(index)

    # --- plumbing --------------------------------------------------------------

    def _name(self, key):
        return self._vprefix + encode_key(key)

    def _invalidate(self, names):
        """Drop local copies of `names` (None: everything); called by listeners."""
        with self._lock:
            if names is None:
                self._epoch += 1
                self._local.clear()
                for slot in self._inflight.values():
                    slot[1] = True
                waiters = list(self._waiters.values())
            else:
                waiters = []
                for name in names:
                    if name.startswith(self._vprefix):
                        self._mark_dirty(name)
                        try:
                            key = decode_key(name[len(self._vprefix) :])
                        except SerializationError:
                            continue  # not written by us
                        self._counts[5] += 1
                        try:
                            self._local.pop(key, None)
                        except TypeError:
                            pass  # decoded to an unhashable/unrelated value: never stored locally
                    elif name.startswith(self._lprefix):
                        name = self._vprefix + name[len(self._lprefix) :]
                    ev = self._waiters.get(name)
                    if ev is not None:
                        waiters.append(ev)
        for ev in waiters:
            ev.set()

    def _listener_target(self, index):
        """Return what listener `index` connects to next: a pool (asyncio: a ClusterNode).

        A primary's listener moves only once its node is no longer a primary in the slot map
        (failed over, removed): a node still serving slots keeps its listener, even when the
        home slot was moved elsewhere.
        """
        slot = self._home_slots[index] if self._home_slots else None
        if slot is not None:
            try:
                if self._pool_nodes[index] not in {n.name for n in self._client.get_primaries()}:
                    node = self._client.nodes_manager.get_node_from_slot(slot)
                    self._listen_targets[index] = self._target_of(node)
                    with self._lock:
                        self._pool_nodes[index] = node.name
                        self._watched = frozenset(n for n, r in zip(self._pool_nodes, self._is_replica) if not r)
            except _REMOTE_ERRORS:
                pass
        return self._listen_targets[index]

    def _unwatched(self, name):
        """Return whether no stream watches the primary serving `name` (a node the cluster gained
        after the tier was built): an eventual tier keeps no copy of it, as nothing would drop it."""
        if not self._cluster or self._strong:
            return False
        if self._health.node_name(name) in self._watched:
            return False
        self._watch_new_primaries()
        return True

    def _refresh_due(self):
        """Return whether a listener that lost its node should have the cluster's slot map re-read
        (a failover may have promoted a replica); at most once a second per tier."""
        now = _monotonic()
        if not self._cluster or now < self._next_refresh:
            return False
        self._next_refresh = now + 1.0
        return True

    def _stream_refused(self, index, message):
        """A listener's setup was refused by the server (ACL, unsupported command): make it loud."""
        first = self._stream_error is None
        self._stream_error = message
        if first:
            if not self.strict:  # strict construction raises it instead
                warnings.warn(message, RuntimeWarning, stacklevel=2)
            _log.warning("%s", message)
        self._tried[index].set()

    def _listener_state(self, index, up):
        self._tried[index].set()
        if up and self._stream_error is not None:
            self._stream_error = None
        with self._lock:
            self._listeners_up[index] = up
            if self._is_replica[index]:
                name = self._pool_nodes[index]
                if self._replica_up[name] and not up:
                    # A copy read from it may be dropped only by a notice we would now miss.
                    self._epoch += 1
                    self._local.clear()
                    for slot in self._inflight.values():
                        slot[1] = True
                self._replica_up[name] = up
            live = all(up for up, replica in zip(self._listeners_up, self._is_replica) if not replica)
            if live and not self._live:
                # Messages sent while we were deaf are lost: start from nothing.
                self._epoch += 1
                self._local.clear()
                for slot in self._inflight.values():
                    slot[1] = True
            self._live = live
        if up:
            # The node accepts connections again: stop failing open for it now rather
            # than after the backoff, or writes would keep missing a reachable Redis.
            self._health.reset(self._pool_nodes[index])

    def _entry(self, value, deadline, blob):
        """Return the local entry of `value`, stored in Redis as `blob` until `deadline` (None: no TTL).

        A strong tier's entry is already expired for the compiled hit, which therefore never
        answers; it carries the digest of `blob` that `_check_script` compares with Redis'.
        """
        if self._strong:
            return Expiring(value, 0.0, hashlib.sha1(blob).hexdigest())
        return value if deadline is None else Expiring(value, deadline)

    def _reply(self, reply, t0, name):
        """Decode a `_LUA_GET` reply for `name` read at `t0`: return (value, local entry), both _MISSING if none."""
        if reply is None:
            self._counts[1] += 1
            return _MISSING, _MISSING
        blob, pttl = reply
        value = self._ser.loads(self._open(blob, name))
        self._counts[0] += 1
        return value, self._entry(value, None if pttl < 0 else t0 + pttl / 1000.0, blob)

    def _written(self, value, ttl, t0, breaker, blob):
        """Account a write of `blob` Redis took at `t0`; return the local entry it leaves."""
        breaker.success()
        self._counts[2] += 1
        return self._entry(value, None if ttl is None else t0 + ttl, blob)

    def _replicated(self, acked):
        """Raise ReplicationError unless `acked` (WAIT's reply) reaches ``wait_replicas``."""
        if acked < self.wait_replicas:
            raise ReplicationError(
                f"WAIT {self.wait_replicas} {int(self.wait_timeout * 1000)}: only {acked} replica(s) "
                "acknowledged the write in time; the primary holds it, replicas may not")

    def _fail_open(self, key):
        """The local copy of `key` while Redis cannot answer (an eventual tier's), else _MISSING, uncounted."""
        return _MISSING if self._strong else self._local_fallback(key)

    def _px(self, ttl):
        return None if ttl is None else max(1, int(ttl * 1000))

    def _lock_name(self, name):
        """Return the Redis name of the lease lock of value name `name`."""
        return self._lprefix + name[len(self._vprefix) :]

    # --- the operations, as steps ----------------------------------------------------
    # Written once for both tiers: each operation is a generator of steps that yields the
    # I/O it needs as (name of an I/O method of the tier, *args) and is sent its result (or
    # thrown its exception) by _drive (TieredCache: blocking methods) or _adrive
    # (AsyncTieredCache: coroutines of the same names: _eval, _set, _del, _run, _lookup,
    # _wait, _compute, _renewal, _end_renewal).

    def _read_node(self, name):
        """Return (node, its breaker or None) to read `name` from, balanced as the client's reads.

        The breaker is a replica's: one that keeps failing is skipped for the slot's primary.
        """
        c = self._client
        node = c.nodes_manager.get_node_from_slot(c.keyslot(name), c.read_from_replicas, c.load_balancing_strategy)
        if node.server_type != "replica":
            return node, None
        if not self._replica_up.get(node.name):  # its notices would not reach us
            return self._primary(name), None
        breaker = self._health.node(node.name)
        if breaker.allow():
            return node, breaker
        return self._primary(name), None

    def _primary(self, name):
        c = self._client
        return c.nodes_manager.get_node_from_slot(c.keyslot(name))

    def _read_steps(self, script, keys, args):
        """Steps: run read-only `script`; with replica reads, on the node _read_node picks.

        Only a replica is asked directly (redis-py would ask the server for the keys of every
        _RO call it routes, an extra round trip); one that fails (down, hung, loading) is
        charged to its own breaker, never the primary's, and the primary answers instead.
        """
        if self._replica_reads:
            node, breaker = self._read_node(keys[0])
            if breaker is not None:
                try:
                    reply = yield "_eval_on", script, keys, args, node
                except _REMOTE_ERRORS as exc:
                    breaker.failure(exc)
                else:
                    breaker.success()
                    return reply
        return (yield "_eval", script, keys, args)

    def _read_run_steps(self, script, chunks, args):
        """Steps: `_run` of read-only `script`; with replica reads, each chunk on the node
        _read_node picks, one pipeline per node; a failed replica's chunks as in _read_steps."""
        if not self._replica_reads:
            return (yield "_run", script, chunks, args)
        groups = {}
        for i, c in enumerate(chunks):
            node, breaker = self._read_node(c[0])
            if breaker is None:
                node = None  # primaries: through the cluster client, as without replicas
            groups.setdefault(None if node is None else node.name, (node, breaker, []))[2].append(i)
        replies = [None] * len(chunks)
        todo = groups.pop(None, (None, None, []))[2]
        groups = list(groups.values())
        if groups:
            got = yield "_run_nodes", script, [([chunks[i] for i in pos], [args[i] for i in pos], node)
                                               for node, _, pos in groups]
            for (node, breaker, pos), res in zip(groups, got):
                if isinstance(res, BaseException):
                    breaker.failure(res)
                    todo += pos
                else:
                    breaker.success()
                    for i, r in zip(pos, res):
                        replies[i] = r
        if todo:
            todo.sort()
            got = yield "_run", script, [chunks[i] for i in todo], [args[i] for i in todo]
            for i, r in zip(todo, got):
                replies[i] = r
        return replies

    def _remote_get_steps(self, key, name, breaker, primary=False):
        """Steps: return the value from Redis (filling local) or _MISSING; may raise RedisError.

        `primary`: read the primary even when the client reads replicas.
        """
        epoch = self._begin(name)
        entry = _MISSING
        try:
            t0 = _monotonic()
            if primary:
                reply = yield "_eval", self._get_script, [name], ()
            else:
                reply = yield from self._read_steps(self._get_script, [name], ())
            breaker.success()
            value, entry = self._reply(reply, t0, name)
            if entry is not _MISSING and self._unwatched(name):
                entry = _MISSING
                self._local.pop(key, None)
            return value
        finally:
            self._end(name, epoch, key, entry)

    def _check_steps(self, key, name, breaker):
        """Steps: a strong read: validate the local copy (or read Redis); return the value or _MISSING."""
        entry = self._local.get(key, _MISSING)
        if type(entry) is not Expiring or entry.token is None:
            return (yield from self._remote_get_steps(key, name, breaker))
        epoch = self._begin(name)
        fresh = _MISSING
        try:
            t0 = _monotonic()
            reply = yield "_eval", self._check_script, [name], [entry.token]
            breaker.success()
            if reply == 1:
                self._count_local_hit()
                return entry.value
            value, fresh = self._reply(reply, t0, name)
            if fresh is _MISSING:
                self._local.pop(key, None)
            return value
        finally:
            self._end(name, epoch, key, fresh)

    def _fetch_steps(self, key):
        """Steps: read `key` the local tier did not answer: Redis, else the local tier; or _MISSING."""
        name = self._name(key)
        breaker = self._health.breaker(name)
        if not self._blocked(breaker):
            try:
                if self._strong:
                    return (yield from self._check_steps(key, name, breaker))
                return (yield from self._remote_get_steps(key, name, breaker))
            except _REMOTE_ERRORS as exc:
                self._error(exc, breaker)
        if self._strong:  # a local copy Redis did not confirm may be stale
            self._counts[1] += 1
            return _MISSING
        return self._fallback(key)  # fail-open: the local tier is all we have

    def _set_steps(self, key, value, ttl):
        """Steps of set (see TieredCache.set)."""
        ttl = self._ttl(ttl)
        name = self._name(key)
        blob = self._seal(self._ser.dumps(value), name)
        breaker = self._health.breaker(name)
        epoch = self._begin(name)
        entry = _MISSING
        try:
            too_large = self._too_large(key, blob)
            if too_large is not None:
                self._error(too_large, breaker)
            elif not self._blocked(breaker):
                try:
                    t0 = _monotonic()
                    if self.wait_replicas:
                        self._replicated((yield "_set_wait", name, blob, self._px(ttl)))
                    else:
                        yield "_set", name, blob, self._px(ttl)
                    entry = self._written(value, ttl, t0, breaker, blob)
                    if self._unwatched(name):
                        entry = _MISSING
                except _REMOTE_ERRORS as exc:
                    self._error(exc, breaker)
        finally:
            if entry is _MISSING:
                # Redis may hold another value (or, after a timeout, maybe ours): trust neither.
                self._local.pop(key, None)
            self._end(name, epoch, key, entry)

    def _delete_steps(self, key):
        """Steps of delete (see TieredCache.delete)."""
        name = self._name(key)
        epoch = self._begin(name)
        existed = False
        try:
            existed = self._local.pop(key, _MISSING) is not _MISSING
            breaker = self._health.breaker(name)
            if not self._blocked(breaker):
                try:
                    existed = bool((yield "_del", name)) or existed
                    breaker.success()
                    self._counts[3] += 1
                except _REMOTE_ERRORS as exc:
                    self._error(exc, breaker)
        finally:
            self._end(name, epoch, key, _MISSING)
        return existed

    def _get_or_set_steps(self, key, compute, ttl):
        """Steps of get_or_set (see TieredCache.get_or_set)."""
        v = yield "_lookup", key
        if v is not _MISSING:
            return v
        name = self._name(key)
        lname = self._lock_name(name)
        token = os.urandom(16).hex().encode()
        lease_ms = max(1, int(self.lock_lease * 1000))
        give_up = _monotonic() + self.lock_wait
        lbreaker = self._health.breaker(lname)
        ev = self._waiter(name, self._Event)
        try:
            while True:
                if self._blocked(lbreaker):
                    return (yield from self._compute_and_set_steps(key, compute, ttl))
                try:
                    ev.clear()
                    acquired = yield "_set", lname, token, lease_ms, True
                    lbreaker.success()
                except _REMOTE_ERRORS as exc:
                    self._error(exc, lbreaker)
                    return (yield from self._compute_and_set_steps(key, compute, ttl))
                if acquired:
                    return (yield from self._compute_locked_steps(key, name, lname, token, lease_ms, compute, ttl, lbreaker))
                remaining = give_up - _monotonic()
                if remaining <= 0:
                    return (yield from self._compute_and_set_steps(key, compute, ttl))
                # Woken by the value's or the lock's invalidation; the poll covers a
                # lease that expires silently and a stream that is down.
                yield "_wait", ev, min(remaining, 0.05)
                v = yield "_lookup", key
                if v is not _MISSING:
                    return v
        finally:
            self._drop_waiter(name, ev)

    def _compute_and_set_steps(self, key, compute, ttl):
        value = yield "_compute", compute
        yield from self._set_steps(key, value, ttl)
        return value

    def _compute_locked_steps(self, key, name, lname, token, lease_ms, compute, ttl, lbreaker):
        try:
            # The previous holder may have finished between our miss and our lock: its write is
            # on the primary (a replica may not have it yet, and we would compute again).
            breaker = self._health.breaker(name)
            try:
                v = yield from self._remote_get_steps(key, name, breaker, primary=True)
            except _REMOTE_ERRORS as exc:
                self._error(exc, breaker)
                v = _MISSING
            if v is not _MISSING:
                return v
            renewal = yield "_renewal", lname, token, lease_ms
            try:
                value = yield "_compute", compute
            finally:
                yield "_end_renewal", renewal
            yield from self._set_steps(key, value, ttl)
            return value
        finally:
            try:
                yield "_eval", self._release_script, [lname], [token]
            except _REMOTE_ERRORS as exc:
                self._error(exc, lbreaker)

    # The batches.

    def _get_many_steps(self, keys, default):
        """Steps of get_many (see TieredCache.get_many)."""
        keys = _batch_keys(keys)
        out = self._hit_many(keys)
        todo = [i for i, v in enumerate(out) if v is _MISSING]
        if todo:
            tkeys = [keys[i] for i in todo]
            found = yield from self._fetch_many_steps(tkeys)
            for i, v in zip(todo, found):
                out[i] = v
        return [default if v is _MISSING else v for v in out]

    def _fetch_many_steps(self, keys):
        """Read `keys` the local tier did not answer (as _fetch, in batches); a list with _MISSING."""
        names = encode_keys(keys, self._vprefix)
        out = [_MISSING] * len(keys)
        first_error = None
        counts = self._counts
        for breaker, pos in self._health.group(names):
            if len(pos) == len(keys):
                gnames, gkeys = names, keys  # one node: no regrouping
            else:
                gnames = [names[p] for p in pos]
                gkeys = [keys[p] for p in pos]
            values = None
            if not self._blocked(breaker):
                entries = ()
                token = self._begin_many(gnames)
                try:
                    t0 = _monotonic()
                    confirmed = ()
                    if self._strong:
                        blobs, confirmed = yield from self._remote_mcheck(gnames, gkeys)
                        ttls = None
                    else:
                        blobs, ttls = yield from self._remote_mget(gnames)
                    breaker.success()
                    values, bad = self._loads_many(blobs, gnames)
                    for j, exc in bad:
                        self._count_error(exc, breaker)
                        first_error = first_error or exc
                    entries = values
                    if self._unwatched(gnames[0]):
                        entries = ()
                        for k in gkeys:
                            self._local.pop(k, None)
                    elif self._strong:
                        entries = [v if v is _MISSING else self._entry(v, None, b) for v, b in zip(values, blobs)]
                    elif ttls:
                        entries = list(values)
                        for j, pttl in ttls.items():
                            if values[j] is not _MISSING:
                                entries[j] = Expiring(values[j], t0 + pttl / 1000.0)
                    for j, value in confirmed:  # the local copy is what Redis holds
                        values[j] = value
                        self._count_local_hit()
                    missing = values.count(_MISSING)
                    counts[0] += len(values) - missing - len(confirmed)
                    counts[1] += missing - len(bad)
                    for j, exc in bad:  # undecodable: the local tier is all we have
                        values[j] = self._fail_open(gkeys[j])
                        counts[1] += values[j] is _MISSING
                except _REMOTE_ERRORS as exc:
                    self._count_error(exc, breaker)
                    first_error = first_error or exc
                finally:
                    self._end_many(token, gkeys, entries or [_MISSING] * len(gnames))
            if values is None:
                values = [self._fail_open(k) for k in gkeys]
                counts[1] += values.count(_MISSING)
            if gkeys is keys:
                out = values
            else:
                for p, v in zip(pos, values):
                    out[p] = v
        if first_error is not None and self.strict:
            raise first_error
        return out

    def _loads_many(self, blobs, names=None):
        """Decode `blobs` of `names` (None: _MISSING); return (values, [(index, SerializationError)]).

        With an encryption key, `names` are what each blob is bound to (None: already decrypted).
        """
        many = getattr(self._ser, "loads_many", None)  # a serializer of the user's may lack it
        if self._cipher is not None and names is not None:
            blobs = list(blobs)
            bad = []
            for j, b in enumerate(blobs):
                if b is not None:
                    try:
                        blobs[j] = self._open(b, names[j])
                    except SerializationError as exc:
                        blobs[j] = None
                        bad.append((j, exc))
            if bad:
                values, more = self._loads_many(blobs)  # the rest, decrypted, as without a key
                return values, sorted(bad + list(more))
        try:
            if many is not None:
                return many(blobs, _MISSING), ()
            loads = self._ser.loads
            return [_MISSING if b is None else loads(b) for b in blobs], ()
        except SerializationError:
            pass
        loads = self._ser.loads
        values, bad = [], []
        for j, b in enumerate(blobs):
            try:
                values.append(_MISSING if b is None else loads(b))
            except SerializationError as exc:
                values.append(_MISSING)
                bad.append((j, exc))
        return values, bad

    def _set_many_steps(self, keys, values, ttl):
        """Steps of set_many (see TieredCache.set_many)."""
        keys = _batch_keys(keys)
        values = list(values)
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys but {len(values)} values")
        ttl = self._ttl(ttl)
        dumps, seal = self._ser.dumps, self._seal
        names = encode_keys(keys, self._vprefix)
        blobs = [seal(dumps(v), n) for v, n in zip(values, names)]
        px = None if ttl is None else max(1, int(ttl * 1000))
        first_error = None
        for breaker, pos in self._health.group(names):
            gnames = [names[p] for p in pos]
            gkeys = [keys[p] for p in pos]
            entries = [_MISSING] * len(pos)
            token = self._begin_many(gnames)
            try:
                send = []
                for j, p in enumerate(pos):
                    exc = self._too_large(keys[p], blobs[p])
                    if exc is None:
                        send.append(j)
                    else:
                        self._count_error(exc, breaker)
                        first_error = first_error or exc
                if send and not self._blocked(breaker):
                    t0 = _monotonic()
                    try:
                        yield from self._remote_mset([gnames[j] for j in send], [blobs[pos[j]] for j in send], px)
                        breaker.success()
                        self._counts[2] += len(send)
                        if not self._unwatched(gnames[0]):
                            for j in send:
                                value = values[pos[j]]
                                entries[j] = self._entry(value, None if ttl is None else t0 + ttl, blobs[pos[j]])
                    except _REMOTE_ERRORS as exc:
                        self._count_error(exc, breaker)
                        first_error = first_error or exc
            finally:
                # As in set: a key Redis may not hold as written keeps no local copy.
                pop = self._local.pop
                for key, entry in zip(gkeys, entries):
                    if entry is _MISSING:
                        pop(key, None)
                self._end_many(token, gkeys, entries)
        if first_error is not None and self.strict:
            raise first_error

    def _delete_many_steps(self, keys):
        """Steps of delete_many (see TieredCache.delete_many)."""
        keys = _batch_keys(keys)
        names = encode_keys(keys, self._vprefix)
        pop = self._local.pop
        existed_locally = [pop(k, _MISSING) is not _MISSING for k in keys]
        removed = 0
        first_error = None
        for breaker, pos in self._health.group(names):
            gnames = [names[p] for p in pos]
            local = sum(existed_locally[p] for p in pos)
            token = self._begin_many(gnames)
            try:
                if self._blocked(breaker):
                    removed += local
                    continue
                try:
                    removed += yield from self._remote_delete(gnames)
                    breaker.success()
                    self._counts[3] += len(gnames)
                except _REMOTE_ERRORS as exc:
                    self._count_error(exc, breaker)
                    first_error = first_error or exc
                    removed += local
            finally:
                self._end_many(token, (), ())
        if first_error is not None and self.strict:
            raise first_error
        return removed

    # The remote calls of the batches, as steps: one node's names, chunked (and slot-grouped
    # on a cluster).

    def _chunks(self, names):
        """Yield lists of names one script call may take: same slot on a cluster, at most _CHUNK."""
        if self._cluster:
            by_slot = {}
            keyslot = self._client.keyslot
            for n in names:
                by_slot.setdefault(keyslot(n), []).append(n)
            groups = by_slot.values()
        else:
            groups = (names,)
        for g in groups:
            for i in range(0, len(g), _CHUNK):
                yield g[i : i + _CHUNK]

    def _run_chunks(self, script, names, args_of=None):
        """Step: run `script` on each chunk of `names`; return [(chunk, reply)]."""
        chunks = list(self._chunks(names))
        args = [args_of(c) if args_of else () for c in chunks]
        if script.readonly:
            replies = yield from self._read_run_steps(script, chunks, args)
        else:
            replies = yield "_run", script, chunks, args
        return list(zip(chunks, replies))

    def _remote_mget(self, names):
        """Steps: return (blobs or None, {index: pttl} of those with a TTL) for `names`, in order."""
        replies = yield from self._run_chunks(self._mget_script, names)
        if not self._cluster:  # the chunks are consecutive slices of names
            blobs, ttls, base = [], {}, 0
            for chunk, (vals, tl) in replies:
                blobs += vals
                for i in range(0, len(tl), 2):
                    ttls[base + tl[i] - 1] = tl[i + 1]
                base += len(chunk)
            return blobs, ttls
        got, ttl_of = {}, {}
        for chunk, (vals, tl) in replies:
            got.update(zip(chunk, vals))
            for i in range(0, len(tl), 2):
                ttl_of[chunk[tl[i] - 1]] = tl[i + 1]
        ttls = {j: ttl_of[n] for j, n in enumerate(names) if n in ttl_of} if ttl_of else {}
        return [got[n] for n in names], ttls

    def _remote_mcheck(self, names, keys):
        """Steps: a strong tier's batch read of `names` (of `keys`): return (blobs or None, confirmed).

        ``confirmed`` lists (index, local value) of the local copies Redis still holds (their
        blob is None): only the other values travel.
        """
        get = self._local.get
        local = [get(k, _MISSING) for k in keys]
        digest_of = {}
        for n, e in zip(names, local):
            digest_of[n] = e.token if type(e) is Expiring and e.token is not None else ""
        replies = yield from self._run_chunks(self._mcheck_script, names, lambda c: [digest_of[n] for n in c])
        got = {}
        for chunk, vals in replies:
            got.update(zip(chunk, vals))
        blobs, confirmed = [], []
        for j, n in enumerate(names):
            b = got[n]
            if b == 1:
                confirmed.append((j, local[j].value))
                b = None
            blobs.append(b)
        return blobs, confirmed

    def _remote_mset(self, names, blobs, px):
        blob_of = dict(zip(names, blobs))
        tail = [] if px is None else [px]
        if self.wait_replicas:
            chunks = list(self._chunks(names))
            args = [[blob_of[n] for n in c] + tail for c in chunks]
            self._replicated((yield "_run_wait", self._mset_script, chunks, args))
        else:
            yield from self._run_chunks(self._mset_script, names, lambda c: [blob_of[n] for n in c] + tail)

    def _remote_delete(self, names):
        return sum(r for _, r in (yield from self._run_chunks(self._unlink_script, names)))



class TieredCache(_TierCore, MutableMapping):
    """Cache values locally in `local` (any kvcache cache) and shared in Redis.

    ``client`` is a ``redis.Redis`` or ``redis.cluster.RedisCluster`` created with
    ``decode_responses=False``; :meth:`from_url` makes one with short timeouts and
    no retries, and a client whose settings would block calls for seconds while
    Redis is down gets a :class:`SlowClientWarning`.  ``namespace`` scopes the
    Redis keys (``namespace:`` with ``\\`` and ``:`` escaped, so namespaces never
    overlap) and invalidation.  ``ttl`` (seconds) is the default lifetime in Redis and
    bounds the local copy.  Values go through `serializer` (default: the safe
    msgpack :class:`~kvcache.serialize.Serializer`, zstd above ``compress_over``
    bytes).  Keys must be made of None/bool/int/float/str/bytes/tuples/frozensets
    (see :func:`kvcache.serialize.encode_key`).

    Fail-open by default: when a node is unreachable, reads of its keys use the
    local tier, writes of its keys are dropped (locally too, so every process
    reads what Redis holds), no exception reaches the caller and
    ``stats().errors`` counts the failures.  A circuit breaker per node (per
    cluster primary) stops calling a dead one after ``failure_threshold``
    failures or one timeout and lets one probe through after an exponential
    backoff.  A command the server refuses (OOM, NOPERM, WRONGTYPE, a value over
    ``max_value_size``, by default the server's proto-max-bulk-len) is counted
    in ``stats().rejections`` and logged once per kind, never opening the
    breaker.  ``strict=True`` raises instead, and raises
    :class:`StreamRefusedError` at construction if the ACL forbids invalidation
    (otherwise a warning and ``stats().stream_error`` name the missing
    permission).  Call :meth:`close` (or use ``with``) to stop the background
    invalidation threads.

    Entries with a TTL sit in `local` wrapped together with their deadline (so
    `local`'s getsizeof sees the wrapper).  A write drops this process's own
    local copy when its notice comes back (a notice cannot tell our write from
    a concurrent one); the next read refills it from Redis.  ``len()`` and
    iteration SCAN the namespace in Redis and raise if it is unreachable.

    ``encryption_key`` (16, 24 or 32 bytes, or a list of them, newest first) encrypts values
    with AES-GCM bound to the namespace and the key (:class:`kvcache.serialize.Cipher`): a
    tampered or foreign value is a miss (raised with ``strict=True``).  Key names stay readable
    in Redis: invalidation maps them back to keys.

    ``consistency="eventual"`` (the default): a local copy answers while the invalidation
    stream is up, so another process's write is seen once its notice arrives (no round trip
    per hit).  ``"strong"``: a read started after a write returned, in any process, sees that
    write.  Every local hit is validated in one round trip (a read-only script compares the
    SHA-1 of the stored frame with the local copy's; the value travels only if it changed);
    ``get_many`` validates its copies the same way, one script call per node; while Redis is unreachable a strong tier serves
    no local copy (a miss; an error with ``strict=True``).

    ``wait_replicas=N`` (``redis.Redis`` clients only): ``set``, ``set_many`` and
    ``get_or_set``'s write send ``WAIT N`` (``wait_timeout`` seconds) on the connection that
    wrote; fewer acknowledgements is a rejection (:class:`ReplicationError`, counted in
    ``stats().rejections``, raised with ``strict=True``) and the writer keeps no local copy.
    The primary still holds the value: WAIT cannot undo a write.  Deletes do not wait.

    Thread-safety: all methods may be called from many threads at once.
    """

    def __init__(
        self,
        local,
        client,
        namespace,
        ttl=None,
        serializer=None,
        compress_over=None,
        strict=False,
        *,
        lock_lease=10.0,
        lock_wait=30.0,
        failure_threshold=3,
        backoff=0.05,
        max_backoff=5.0,
        max_value_size=None,
        encryption_key=None,
        consistency="eventual",
        wait_replicas=0,
        wait_timeout=1.0,
    ):
        self._setup(
            local, client, namespace, ttl, serializer, compress_over, strict, lock_lease, lock_wait,
            failure_threshold, backoff, max_backoff, max_value_size, encryption_key,
            consistency, wait_replicas, wait_timeout,
        )

        self._stop = threading.Event()
        pools = _pools(client, self._replica_reads)
        self._setup_listeners(pools, len(client.get_primaries()) if self._cluster else 1)
        self._threads = []
        self._finalizer = weakref.finalize(self, self._stop.set)
        for i in range(len(pools)):
            self._spawn_listener(i)
        if self.strict:
            # A refused stream is a configuration error: report it now, not as slow reads later.
            for ev in self._tried:
                ev.wait(_SETUP_WAIT)
            if self._stream_error is not None:
                self.close()
                raise StreamRefusedError(self._stream_error)
        _check_client(client)

    @classmethod
    def from_url(cls, url, local, namespace, *, timeout=0.25, cluster=False, client_kwargs=None, **kwargs):
        """Build a tier on a new client for `url` that gives up after `timeout` seconds, never retrying.

        ``url`` is a redis-py URL (``redis://``, ``rediss://``, ``unix://``); ``cluster=True``
        makes a ``redis.cluster.RedisCluster`` from it.  ``client_kwargs`` go to the client
        (e.g. ``ssl_ca_certs``), the other keyword arguments to the constructor.  The tier owns
        this client: :meth:`close` closes it.
        """
        ckw = _url_client_kwargs(timeout, client_kwargs, _no_retry())
        if cluster:
            from redis.cluster import RedisCluster

            client = RedisCluster.from_url(url, **ckw)
        else:
            client = _redis.Redis.from_url(url, **ckw)
        try:
            tier = cls(local, client, namespace, **kwargs)
        except BaseException:
            client.close()
            raise
        tier._owns_client = True
        return tier

    # --- the mapping -----------------------------------------------------------

    # __getitem__, get and __contains__ are compiled (TieredBase): they answer a local hit
    # and call _fetch for everything else.

    def _fetch(self, key):
        """Read `key` the local tier did not answer: Redis, else the local tier; or _MISSING."""
        return _drive(self._fetch_steps(key), self)

    def __setitem__(self, key, value):
        self.set(key, value)

    def set(self, key, value, ttl=_DEFAULT):
        """Store `value` in Redis and locally; `ttl` (seconds) overrides the default.

        Raises TypeError for a value the serializer cannot represent.  A write Redis did
        not take (down, breaker open, rejected, too large) leaves no local copy either:
        every process then reads what Redis holds.
        """
        _drive(self._set_steps(key, value, ttl), self)

    def __delitem__(self, key):
        if not self.delete(key):
            raise KeyError(key)

    def delete(self, key):
        """Remove `key` from Redis and locally; return whether it existed."""
        return _drive(self._delete_steps(key), self)

    # --- batches (the steps are _TierCore's) ----------------------------------------

    def get_many(self, keys, default=None):
        """Return a list with the value of each of `keys`, `default` for those found nowhere.

        The local tier answers what it may; the rest is read in one round trip per Redis
        node (per 1,000 keys), filled locally under the rules of :meth:`get`.  Keys of a
        node whose breaker is open, or that fails, fail open one by one.
        """
        return _drive(self._get_many_steps(keys, default), self)

    def set_many(self, keys, values, ttl=_DEFAULT):
        """Store each of `values` under the matching one of `keys`, in Redis and locally.

        One round trip per Redis node (per 1,000 keys); as :meth:`set`, a value Redis did
        not take leaves no local copy.  Every value is encoded before anything is written:
        a TypeError writes nothing.
        """
        return _drive(self._set_many_steps(keys, values, ttl), self)

    def delete_many(self, keys):
        """Remove `keys` from Redis and locally; return how many existed (in Redis, else locally)."""
        return _drive(self._delete_many_steps(keys), self)

    def _run(self, script, chunks, args):
        """Run `script` on each chunk of names with its arguments; return the replies."""
        if not self._cluster:
            return [script(keys=c, args=a, client=self._client) for c, a in zip(chunks, args)]
        # The cluster pipeline sends each EVAL to its node; EVAL (not EVALSHA) needs no SCRIPT LOAD,
        # which a minimal ACL user may not be allowed. Naming the node spares a round trip per
        # command: redis-py's pipeline asks the server (COMMAND GETKEYS) for the keys of any
        # command it was not told the node of; a MOVED reply still takes its redirection path.
        pipe = self._client.pipeline()
        for c, a in zip(chunks, args):
            pipe.execute_command("EVAL", script.source, len(c), *c, *a, target_nodes=self._primary(c[0]))
        return pipe.execute()

    def _run_nodes(self, script, work):
        """Run read-only `script` on [(chunks, args, node)]: one plain pipeline per node (no
        cluster client in the way: a failure is that node's); per node, its replies or its error."""
        out = []
        for chunks, args, node in work:
            try:
                pipe = self._client.get_redis_connection(node).pipeline(transaction=False)
                for c, a in zip(chunks, args):
                    pipe.execute_command("EVAL_RO", script.source, len(c), *c, *a)
                out.append(pipe.execute())
            except _REMOTE_ERRORS as exc:
                out.append(exc)
        return out

    def _run_wait(self, script, chunks, args):
        """`_run` (on a redis.Redis), then WAIT on the same connection; return WAIT's reply."""
        pipe = self._client.pipeline(transaction=False)
        for c, a in zip(chunks, args):
            pipe.execute_command("EVAL", script.source, len(c), *c, *a)
        pipe.wait(self.wait_replicas, max(1, int(self.wait_timeout * 1000)))
        return pipe.execute()[-1]

    def _scan_names(self):
        return self._client.scan_iter(match=scan_pattern(self._vprefix), count=500)

    def __iter__(self):
        """Iterate over the keys in Redis (SCAN: may miss or repeat keys changed meanwhile)."""
        n = len(self._vprefix)
        for name in self._scan_names():
            try:
                yield decode_key(name[n:])
            except SerializationError:
                continue

    def __len__(self):
        """Return the number of keys of the namespace in Redis (a full SCAN)."""
        return sum(1 for _ in self._scan_names())

    def clear(self):
        """Remove every key of the namespace from Redis and the local tier."""
        with self._lock:
            self._epoch += 1
            self._local.clear()
        # SCAN visits every node: a breaker open on any of them keeps us out.
        if any([self._blocked(b) for b in self._health.breakers()]):
            return
        try:
            batch = []
            for name in self._scan_names():
                batch.append(name)
                if len(batch) >= 500:
                    self._client.unlink(*batch)
                    batch.clear()
            if batch:
                self._client.unlink(*batch)
        except _REMOTE_ERRORS as exc:
            self._error(exc, None)

    # --- single flight across processes ---------------------------------------

    def get_or_set(self, key, compute, ttl=_DEFAULT):
        """Return the value of `key`, computing it with ``compute()`` if missing.

        Across processes only the holder of a Redis lease lock computes; the
        lease is renewed while `compute` runs and released by token.  Others wait
        for the value up to `lock_wait` seconds, then compute themselves; a
        crashed holder blocks no one past `lock_lease` seconds.
        """
        return _drive(self._get_or_set_steps(key, compute, ttl), self)

    # --- blocking I/O: what the steps yield ------------------------------------------

    _Event = threading.Event

    def _eval(self, script, keys, args):
        return script(keys=keys, args=args, client=self._client)

    def _eval_on(self, script, keys, args, node):
        return script(keys, args, self._client.get_redis_connection(node), ro=True)

    def _target_of(self, node):
        return self._client.get_redis_connection(node).connection_pool

    def _spawn_listener(self, index):
        t = threading.Thread(
            target=_listen,
            args=(weakref.ref(self), index, self._prefix, self._stop),
            name=f"kvcache-invalidation-{self.namespace.decode(errors='replace')}-{index}",
            daemon=True,
        )
        self._threads.append(t)
        t.start()

    def _refresh_topology(self):
        if self._refresh_due():
            try:
                self._client.nodes_manager.initialize()
            except Exception:  # the next attempt, or the next failed call, reads it again
                pass

    def _set(self, name, blob, px, nx=False):
        return self._client.set(name, blob, px=px, nx=nx)

    def _set_wait(self, name, blob, px):
        """SET, then WAIT on the same connection (WAIT counts that connection's writes); return WAIT's reply."""
        pipe = self._client.pipeline(transaction=False)
        pipe.set(name, blob, px=px)
        pipe.wait(self.wait_replicas, max(1, int(self.wait_timeout * 1000)))
        return pipe.execute()[1]

    def _del(self, name):
        return self._client.delete(name)

    def _lookup(self, key):
        try:
            return self[key]
        except KeyError:
            return _MISSING

    def _wait(self, ev, timeout):
        ev.wait(timeout)

    def _compute(self, compute):
        return compute()

    def _renewal(self, lname, token, lease_ms):
        stop = threading.Event()
        renewer = threading.Thread(
            target=_renew, args=(self._renew_script, self._client, lname, token, lease_ms, stop), daemon=True
        )
        renewer.start()
        return stop, renewer

    def _end_renewal(self, renewal):
        stop, renewer = renewal
        stop.set()
        renewer.join()

    # --- misc ------------------------------------------------------------------

    def wait_live(self, timeout=5.0):
        """Block until the invalidation stream is up; return whether it is."""
        end = _monotonic() + timeout
        while not self._live and _monotonic() < end:
            time.sleep(0.005)
        return self._live

    def close(self):
        """Stop the invalidation threads; close the client only if :meth:`from_url` made it."""
        self._stop.set()
        for t in list(self._threads):
            if t is not threading.current_thread():
                t.join(timeout=2.0)
        self._live = False
        if self._owns_client:
            self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()



class AsyncTieredCache(_TierCore, AsyncTieredBase):
    """Cache values locally in `local` (any kvcache cache) and shared in Redis, for asyncio.

    The asyncio twin of :class:`TieredCache`, with the same arguments, consistency rules
    and fail-open behaviour (the same code: see the module docstring); ``client`` is a
    ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster`` (made with
    ``decode_responses=False``, short timeouts, no retries: :meth:`from_url` builds one).
    Every operation is a coroutine: ``await tier.get(key)``, ``await tier.set(key, value)``,
    ``await tier.get_or_set(key, compute)``.  A local hit awaits nothing: the coroutine
    returns at once, without a round trip.

    The invalidation stream runs as a task of the event loop the tier is first used in
    (or entered with ``async with``); use a tier in one loop only.  Until the stream is up
    every read goes to Redis; if Redis refuses it (ACL), a warning and
    ``stats().stream_error`` say why, and with ``strict=True`` :meth:`wait_live` raises
    :class:`StreamRefusedError`.  Close it with :meth:`aclose` or ``async with``.

    ``get_or_set`` runs one ``compute`` per key at a time across the tasks of this process
    (the others await its result) and across processes (a Redis lease, as TieredCache).
    ``compute`` may be a plain function or return an awaitable; a slow plain function
    blocks the event loop, lease renewal included.
    """

    def __init__(
        self,
        local,
        client,
        namespace,
        ttl=None,
        serializer=None,
        compress_over=None,
        strict=False,
        *,
        lock_lease=10.0,
        lock_wait=30.0,
        failure_threshold=3,
        backoff=0.05,
        max_backoff=5.0,
        max_value_size=None,
        encryption_key=None,
        consistency="eventual",
        wait_replicas=0,
        wait_timeout=1.0,
    ):
        import redis.asyncio
        import redis.asyncio.cluster

        if not isinstance(client, (redis.asyncio.Redis, redis.asyncio.cluster.RedisCluster)):
            raise TypeError(
                "AsyncTieredCache needs a redis.asyncio.Redis or redis.asyncio.cluster.RedisCluster "
                f"client (for redis.Redis use TieredCache), not {type(client).__name__}"
            )
        # The server's limit cannot be read without a loop: _start reads it.
        self._read_max_bulk = max_value_size is None
        self._setup(
            local, client, namespace, ttl, serializer, compress_over, strict, lock_lease, lock_wait,
            failure_threshold, backoff, max_backoff, _MAX_BULK if max_value_size is None else max_value_size,
            encryption_key, consistency, wait_replicas, wait_timeout,
        )
        # A cluster's primaries are known only once the client has met it (_start_cluster).
        self._pools = [] if self._cluster else [client.connection_pool]
        self._setup_listeners(self._pools, len(self._pools))
        self._tasks = None  # the listeners, started on the first slow-path call in a loop
        self._flights = {}  # Redis name -> future of the get_or_set computing it in this process
        self._closed = False
        _check_client(client, "AsyncTieredCache")

    @classmethod
    def from_url(cls, url, local, namespace, *, timeout=0.25, cluster=False, client_kwargs=None, **kwargs):
        """Build a tier on a new ``redis.asyncio`` client for `url` that gives up after `timeout` seconds.

        The client never retries; ``cluster=True`` makes a ``redis.asyncio.cluster.RedisCluster``;
        ``client_kwargs`` go to the client, the other keyword arguments to the constructor.
        The tier owns this client: :meth:`aclose` closes it.
        """
        import redis.asyncio
        from redis.asyncio.retry import Retry

        ckw = _url_client_kwargs(timeout, client_kwargs, Retry(_redis.backoff.NoBackoff(), 0))
        if cluster:
            from redis.asyncio.cluster import RedisCluster

            client = RedisCluster.from_url(url, **ckw)
        else:
            client = redis.asyncio.Redis.from_url(url, **ckw)
        tier = cls(local, client, namespace, **kwargs)
        tier._owns_client = True
        return tier

    # --- the listener tasks ------------------------------------------------------------------

    def _start(self):
        """Start the invalidation tasks in the running loop, once (every slow path calls this)."""
        if self._tasks is None and not self._closed:
            loop = asyncio.get_running_loop()
            if self._cluster:
                self._tasks = [loop.create_task(self._start_cluster())]
            else:
                self._tasks = [self._listener_task(0)]
            if self._read_max_bulk:
                self._read_max_bulk = False
                self._tasks.append(loop.create_task(self._adopt_max_bulk()))

    def _listener_task(self, index):
        ns = self.namespace.decode(errors="replace")
        return asyncio.get_running_loop().create_task(
            _alisten(weakref.ref(self), index, self._prefix), name=f"kvcache-invalidation-{ns}-{index}"
        )

    async def _start_cluster(self):
        """Meet the cluster (retrying while it is unreachable), then listen to each primary."""
        delay = 0.02
        while True:
            try:
                await self._client.initialize()
                pools = _listened_nodes(self._client, self._replica_reads)
                break
            except _REMOTE_ERRORS:
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, _LISTEN_RETRY_CAP)
        self._pools = pools
        self._setup_listeners(pools, len(self._client.get_primaries()))  # ClusterNode has what a pool gives a listener
        self._tasks.extend(self._listener_task(i) for i in range(len(pools)))

    async def _adopt_max_bulk(self):
        self.max_value_size = await _aserver_max_bulk(self._client)

    async def wait_live(self, timeout=5.0):
        """Wait until the invalidation stream is up (starting it); return whether it is.

        With ``strict=True``, raise :class:`StreamRefusedError` if Redis refuses the stream
        (an ACL without the permissions it needs: ``stats().stream_error`` names them).
        """
        self._start()
        end = _monotonic() + timeout
        while not self._live and _monotonic() < end:
            if self.strict and self._stream_error is not None:
                raise StreamRefusedError(self._stream_error)
            await asyncio.sleep(0.005)
        return self._live

    async def aclose(self):
        """Stop the invalidation tasks; close the client only if :meth:`from_url` made it.

        The tier still works afterwards, reading Redis on every call.
        """
        self._closed = True
        tasks, self._tasks = self._tasks or [], None
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a cancellation racing a read's timeout can be lost (async_timeout on
            # Python 3.10); such a listener ends at its next read, seeing the tier closed.
            await asyncio.wait(tasks, timeout=1.0)
        self._tasks = tasks  # kept for inspection; _closed keeps them from restarting
        self._live = False
        if self._owns_client:
            self._owns_client = False
            await self._client.aclose()

    async def __aenter__(self):
        self._start()
        return self

    async def __aexit__(self, *exc):
        await self.aclose()

    # --- reads -------------------------------------------------------------------------------

    # `await tier.get(key, default=None)` is compiled (AsyncTieredBase): it answers a local hit
    # and awaits _fetch for everything else.

    async def _fetch(self, key):
        """Read `key` the local tier did not answer: Redis, else the local tier; or _MISSING."""
        self._start()
        return await _adrive(self._fetch_steps(key), self)

    async def get_many(self, keys, default=None):
        """Return a list with ``await get(key, default)`` for each of `keys`.

        The local tier answers what it may; the rest is read in one round trip per 1,000
        keys (one Lua call, values with their TTLs), filled locally under the rules of
        :meth:`get`.  Fails open key by key as :meth:`get`.
        """
        self._start()
        return await _adrive(self._get_many_steps(keys, default), self)

    # --- writes ------------------------------------------------------------------------------

    async def set(self, key, value, ttl=_DEFAULT):
        """Store `value` in Redis and locally; `ttl` (seconds) overrides the default.

        Raises TypeError for a value the serializer cannot represent.  A write Redis did
        not take leaves no local copy either: every process then reads what Redis holds.
        """
        self._start()
        await _adrive(self._set_steps(key, value, ttl), self)

    async def set_many(self, keys, values, ttl=_DEFAULT):
        """Store each of `values` under the matching one of `keys`, in Redis and locally.

        One round trip per 1,000 keys; as :meth:`set`, a value Redis did not take leaves no
        local copy.  Every value is encoded before anything is written: a TypeError writes
        nothing.
        """
        self._start()
        return await _adrive(self._set_many_steps(keys, values, ttl), self)

    async def delete(self, key):
        """Remove `key` from Redis and locally; return whether it existed."""
        self._start()
        return await _adrive(self._delete_steps(key), self)

    async def delete_many(self, keys):
        """Remove `keys` from Redis and locally; return how many existed (in Redis, else locally)."""
        self._start()
        return await _adrive(self._delete_many_steps(keys), self)

    async def clear(self):
        """Remove every key of the namespace from Redis and the local tier."""
        self._start()
        with self._lock:
            self._epoch += 1
            self._local.clear()
        if any([self._blocked(b) for b in self._health.breakers()]):
            return
        try:
            batch = []
            async for name in self._client.scan_iter(match=scan_pattern(self._vprefix), count=500):
                batch.append(name)
                if len(batch) >= 500:
                    await self._client.unlink(*batch)
                    batch.clear()
            if batch:
                await self._client.unlink(*batch)
        except _REMOTE_ERRORS as exc:
            self._error(exc, None)

    # --- single flight -----------------------------------------------------------------------

    async def get_or_set(self, key, compute, ttl=_DEFAULT):
        """Return the value of `key`, computing it with ``compute()`` if missing.

        One task of this process computes a missing key at a time; the others await its
        result (or its exception).  Across processes only the holder of a Redis lease
        computes, as in :meth:`TieredCache.get_or_set`.  A cancelled computing task hands
        the key over to a waiting one.
        """
        v = self._local_hit(key)
        if v is not _MISSING:
            return v
        name = self._name(key)
        while True:
            flight = self._flights.get(name)
            if flight is None:
                break
            # Shielded: a waiter's cancellation must not cancel the computing task's future.
            v = await asyncio.shield(flight)
            if v is not _MISSING:  # _MISSING: the computing task was cancelled; try again
                return v
        # No await between the check above and this: the flight is ours alone.
        flight = self._flights[name] = asyncio.get_running_loop().create_future()
        try:
            self._start()
            v = await _adrive(self._get_or_set_steps(key, compute, ttl), self)
        except asyncio.CancelledError:
            flight.set_result(_MISSING)
            raise
        except BaseException as exc:
            flight.set_exception(exc)
            flight.exception()  # retrieved: with no waiter asyncio must not log it
            raise
        else:
            flight.set_result(v)
            return v
        finally:
            if self._flights.get(name) is flight:
                del self._flights[name]

    # --- awaited I/O: what the steps yield (see _TierCore) ---------------------------------

    _Event = asyncio.Event

    async def _eval(self, script, keys, args):
        return await script.acall(keys=keys, args=args, client=self._client)

    async def _eval_on(self, script, keys, args, node):
        return await script.acall(keys, args, node, ro=True)

    def _target_of(self, node):
        return node  # a ClusterNode has what a pool gives a listener

    def _spawn_listener(self, index):
        if self._tasks is not None and not self._closed:
            self._tasks.append(self._listener_task(index))

    async def _refresh_topology(self):
        if self._refresh_due():
            try:
                await self._client.nodes_manager.initialize()
            except Exception:
                pass

    async def _set(self, name, blob, px, nx=False):
        return await self._client.set(name, blob, px=px, nx=nx)

    async def _set_wait(self, name, blob, px):
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.set(name, blob, px=px)
            pipe.wait(self.wait_replicas, max(1, int(self.wait_timeout * 1000)))
            return (await pipe.execute())[1]

    async def _del(self, name):
        return await self._client.delete(name)

    async def _run(self, script, chunks, args):
        if not self._cluster:
            return [await script.acall(keys=c, args=a, client=self._client) for c, a in zip(chunks, args)]
        pipe = self._client.pipeline()  # each EVAL to its node, as TieredCache._run
        for c, a in zip(chunks, args):
            pipe.execute_command("EVAL", script.source, len(c), *c, *a)
        return await pipe.execute()

    async def _run_nodes(self, script, work):
        # One cluster pipeline to all the nodes at once; no raising and no redirections, so that
        # redis-py neither retries (rerouting by asking the server for keys) nor hides whose error.
        pipe = self._client.pipeline()
        for chunks, args, node in work:
            for c, a in zip(chunks, args):
                pipe.execute_command("EVAL_RO", script.source, len(c), *c, *a, target_nodes=node)
        try:
            got = await pipe.execute(raise_on_error=False, allow_redirections=False)
        except _REMOTE_ERRORS as exc:
            return [exc] * len(work)
        out, k = [], 0
        for chunks, _, _ in work:
            res = got[k : k + len(chunks)]
            k += len(chunks)
            out.append(next((r for r in res if isinstance(r, BaseException)), res))
        return out

    async def _run_wait(self, script, chunks, args):
        async with self._client.pipeline(transaction=False) as pipe:
            for c, a in zip(chunks, args):
                pipe.execute_command("EVAL", script.source, len(c), *c, *a)
            pipe.wait(self.wait_replicas, max(1, int(self.wait_timeout * 1000)))
            return (await pipe.execute())[-1]

    async def _lookup(self, key):
        return await self.get(key, _MISSING)

    async def _wait(self, ev, timeout):
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def _compute(self, compute):
        value = compute()
        if inspect.isawaitable(value):
            value = await value
        return value

    async def _renewal(self, lname, token, lease_ms):
        return asyncio.ensure_future(_arenew(self._renew_script, self._client, lname, token, lease_ms))

    async def _end_renewal(self, renewal):
        renewal.cancel()

    def cached(self, ttl=_DEFAULT, key=None):
        """Decorate a coroutine function: cache its results in this tier, one call per key at a time.

        The key of a call is the function's module and qualified name with
        ``key(*args, **kwargs)`` (default :func:`kvcache.keys.hashkey`), so the arguments
        must be what keys may hold (None/bool/int/float/str/bytes, tuples, frozensets):
        give ``key`` for others (a web framework's request object, say).  Concurrent calls
        with equal arguments run the function once, here and in other processes
        (:meth:`get_or_set`); an exception is not cached.
        """
        if key is None:
            from kvcache.keys import hashkey as key

        def decorator(fn):
            if not inspect.iscoroutinefunction(fn):
                raise TypeError(f"cached() decorates coroutine functions (async def), not {fn!r}")
            name = f"{fn.__module__}.{fn.__qualname__}"

            @functools.wraps(fn)
            async def wrapper(*args, **kwargs):
                return await self.get_or_set((name, key(*args, **kwargs)), lambda: fn(*args, **kwargs), ttl)

            return wrapper

        return decorator

    # --- the sync protocol, refused -----------------------------------------------------------

    def _sync(self, *args):
        raise TypeError(
            "AsyncTieredCache is used with await: `await tier.get(key)`, `await tier.set(key, value)`, "
            "`await tier.delete(key)` (TieredCache is the blocking mapping)"
        )

    __getitem__ = __setitem__ = __delitem__ = __contains__ = _sync


def _is_cluster(client):
    try:
        from redis.cluster import RedisCluster
        from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    except ImportError:  # pragma: no cover
        return False
    return isinstance(client, (RedisCluster, AsyncRedisCluster))


def _is_async(client):
    return type(client).__module__.startswith("redis.asyncio")


def _connection_kwargs(client):
    if _is_cluster(client):
        if _is_async(client):  # nodes without pools, made when the client first connects
            return client.get_connection_kwargs()
        node = client.get_default_node()
        return node.redis_connection.connection_pool.connection_kwargs
    return client.connection_pool.connection_kwargs


_SLOW = 1.0  # seconds: a client blocking longer than this per call defeats fail-open


def _no_retry():
    return _redis.retry.Retry(_redis.backoff.NoBackoff(), 0)


def _url_client_kwargs(timeout, client_kwargs, retry):
    """Return the client arguments of `from_url`: `timeout` for every wait, `retry` (none), raw bytes."""
    if not timeout > 0:
        raise ValueError("timeout must be > 0")
    ckw = dict(socket_timeout=timeout, socket_connect_timeout=timeout, retry=retry)
    ckw.update(client_kwargs or {})
    ckw["decode_responses"] = False
    return ckw


def _client_problems(client):
    """Return what in a client's settings makes a call block for long while Redis is down."""
    kw = _connection_kwargs(client)
    timeout = kw.get("socket_timeout")
    connect = kw.get("socket_connect_timeout") or timeout
    problems = []
    if timeout is None or timeout > _SLOW:
        problems.append(f"socket_timeout={timeout}")
    if connect is None or connect > _SLOW:
        problems.append(f"socket_connect_timeout={connect}")
    for retry in (kw.get("retry"), getattr(client, "retry", None) if _is_cluster(client) else None):
        n = 0 if retry is None else (retry.get_retries() if hasattr(retry, "get_retries") else retry._retries)
        if n:
            problems.append(f"{n} retries")
            break
    return problems


def _check_client(client, tier="TieredCache"):
    problems = _client_problems(client)
    if problems:
        warnings.warn(
            f"the redis client's {', '.join(problems)} can block every call for seconds while "
            "Redis is down or hung, which defeats fail-open; build the tier with "
            f"{tier}.from_url(url, local, namespace, timeout=0.25), or give the client "
            "socket_timeout and socket_connect_timeout <= 1 s and retry=Retry(NoBackoff(), 0)",
            SlowClientWarning,
            stacklevel=3,
        )


_MAX_BULK = 512 * 1024 * 1024  # Redis' default proto-max-bulk-len


def _server_max_bulk(client):
    """Return the server's proto-max-bulk-len, or Redis' default if it cannot be read (ACL, down)."""
    try:
        got = client.config_get("proto-max-bulk-len")
    except Exception:  # NOPERM for most ACL users, down, a proxy without CONFIG: keep the default
        return _MAX_BULK
    return _max_bulk_of(client, got)


async def _aserver_max_bulk(client):
    """`_server_max_bulk` for a ``redis.asyncio`` client."""
    try:
        got = await client.config_get("proto-max-bulk-len")
    except Exception:
        return _MAX_BULK
    return _max_bulk_of(client, got)


def _max_bulk_of(client, got):
    """Return proto-max-bulk-len from a CONFIG GET reply, or Redis' default."""
    if _is_cluster(client) and got and all(isinstance(v, dict) for v in got.values()):
        got = next(iter(got.values()))  # per node on some redis-py versions
    try:
        return int(got[b"proto-max-bulk-len"] if b"proto-max-bulk-len" in got else got["proto-max-bulk-len"])
    except (KeyError, TypeError, ValueError):
        return _MAX_BULK


def _pool_node_name(pool):
    """Return ``host:port`` of a pool's server, as redis-py's cluster names its nodes."""
    kw = pool.connection_kwargs
    return f"{kw.get('host')}:{kw.get('port')}"


def _reads_replicas(client):
    """Return whether a cluster client balances reads over replicas too."""
    return _is_cluster(client) and bool(
        getattr(client, "read_from_replicas", False) or getattr(client, "load_balancing_strategy", None))


def _listened_nodes(client, replicas):
    """Return the cluster nodes whose invalidations the tier needs: the primaries, and the
    replicas when it reads from them (a copy read from a lagging replica is dropped only by
    that replica's own notice, sent once it has applied the write)."""
    nodes = client.get_primaries()
    if replicas:
        nodes = nodes + client.get_replicas()
    return nodes


def _home_slots(client, names):
    """Return a slot that each primary of `names` serves (None for one that serves none)."""
    found = {}
    want = set(names)
    for slot, nodes in client.nodes_manager.slots_cache.items():
        name = nodes[0].name if nodes else None
        if name in want and name not in found:
            found[name] = slot
            if len(found) == len(want):
                break
    return [found.get(n) for n in names]


def _pools(client, replicas=False):
    if _is_cluster(client):
        pools = []
        for node in _listened_nodes(client, replicas):
            if node.redis_connection is None:
                client.get_redis_connection(node)
            pools.append(node.redis_connection.connection_pool)
        return pools
    return [client.connection_pool]


# Connection settings worth copying from the user's pool; the rest (retries,
# RESP3 push handlers, decoding) would get in the way of a raw tracking socket.
_COPY_KWARGS = {
    "host", "port", "path", "db", "username", "password", "credential_provider",
    "socket_connect_timeout", "socket_keepalive", "socket_keepalive_options", "socket_type",
}


def _listener_kwargs(pool, retry):
    """Return the arguments of a tracking connection to the server of `pool` (sync or asyncio)."""
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k in _COPY_KWARGS or k.startswith("ssl")}
    kwargs.update(protocol=2, decode_responses=False, socket_timeout=5.0, retry=retry)
    return kwargs


def _make_listener_connection(pool):
    return pool.connection_class(**_listener_kwargs(pool, _redis.retry.Retry(_redis.backoff.NoBackoff(), 0)))


_NO_NOTICE = object()


def _notice(msg):
    """Return the names an invalidation message carries (None: all), or _NO_NOTICE for other replies."""
    if isinstance(msg, list) and len(msg) == 3 and msg[0] == b"message":
        return msg[2]
    return _NO_NOTICE


class _Heartbeat:
    """When a quiet invalidation stream needs a PING, and when an unanswered one means it is dead.

    A silent peer (partition, no FIN) is detected only this way.
    """

    __slots__ = ("last", "pinged")

    def __init__(self):
        self.heard()

    def heard(self):
        self.last = _monotonic()
        self.pinged = None

    def ping_due(self):
        """Return whether to send a PING now; raise TimeoutError if the last one went unanswered."""
        now = _monotonic()
        if self.pinged is None:
            if now - self.last > _PING_EVERY:
                self.pinged = now
                return True
        elif now - self.pinged > _PING_TIMEOUT:
            raise _redis.exceptions.TimeoutError("invalidation stream: PING unanswered")
        return False


_PING_EVERY = 1.0
# A restarted server is noticed within this; a refused connection costs nothing, so the
# retries stay frequent (a longer cap kept the tier not-live for seconds after a restart).
_LISTEN_RETRY_CAP = 0.5
_SETUP_WAIT = 5.0  # strict construction waits this long at most for each stream's first attempt
_PING_TIMEOUT = 2.0


def _handshake(prefix):
    """Set a connection up as the invalidation stream of `prefix`, without I/O.

    Yields (the ACL permission the command needs, the command) and is sent each reply.
    """
    cid = yield "+client|id", ("CLIENT", "ID")
    yield (
        "+client|tracking (and read access to the namespace's keys)",
        ("CLIENT", "TRACKING", "ON", "REDIRECT", cid, "BCAST", "PREFIX", prefix),
    )
    yield "+subscribe and &__redis__:invalidate", ("SUBSCRIBE", "__redis__:invalidate")


def _refused(ref, index, prefix, exc, step):
    """Report a handshake the server refused (`step` names the missing permission) to the tier."""
    tier = ref()
    if tier is not None:
        tier._stream_refused(index, (
            f"Redis refused the invalidation stream of namespace {prefix!r} ({exc}); "
            f"the ACL user needs {step}. Until then every read goes to Redis"))


def _listen(ref, index, prefix, stop):
    """Keep one tracking connection to one node (the tier says which); report changes to the tier."""
    delay = 0.02
    while not stop.is_set():
        conn = None
        tier = ref()
        if tier is None:
            return
        pool = tier._listener_target(index)
        del tier
        try:
            conn = _make_listener_connection(pool)
            conn.connect()
            steps = _handshake(prefix)
            reply = None
            try:
                # Each (step, command) is the generator's answer to the previous reply.
                for step, command in iter(lambda: steps.send(reply), None):
                    conn.send_command(*command)
                    reply = conn.read_response()
            except _redis.exceptions.ResponseError as exc:
                _refused(ref, index, prefix, exc, step)
                raise
            tier = ref()
            if tier is None:
                return
            tier._listener_state(index, True)
            del tier
            delay = 0.02
            beat = _Heartbeat()
            while not stop.is_set():
                if conn.can_read(timeout=0.1):
                    msg = conn.read_response()
                    beat.heard()
                    names = _notice(msg)
                    if names is not _NO_NOTICE:
                        tier = ref()
                        if tier is None:
                            return
                        tier._invalidate(names)
                        del tier
                elif beat.ping_due():
                    conn.send_command("PING")
        except Exception:
            pass
        finally:
            if conn is not None:
                try:
                    conn.disconnect()
                except Exception:
                    pass
        tier = ref()
        if tier is None:
            return
        tier._listener_state(index, False)
        tier._refresh_topology()
        del tier
        stop.wait(delay * random.uniform(0.5, 1.0))
        delay = min(delay * 2, _LISTEN_RETRY_CAP)


def _renew(script, client, lname, token, lease_ms, stop):
    """Extend the lease every third of it until `stop`; give up once it is lost."""
    while not stop.wait(lease_ms / 3000.0):
        try:
            if not script(keys=[lname], args=[token, lease_ms], client=client):
                return
        except RedisError:
            continue


async def _alisten(ref, index, prefix):
    """Keep one tracking connection to one node (the tier says which); report changes to the tier (asyncio)."""
    from redis.asyncio.retry import Retry

    delay = 0.02
    while True:
        conn = None
        tier = ref()
        if tier is None or tier._closed:
            return
        pool = tier._listener_target(index)
        del tier
        try:
            conn = pool.connection_class(**_listener_kwargs(pool, Retry(_redis.backoff.NoBackoff(), 0)))
            await conn.connect()
            steps = _handshake(prefix)
            reply = None
            try:
                # Each (step, command) is the generator's answer to the previous reply.
                for step, command in iter(lambda: steps.send(reply), None):
                    await conn.send_command(*command)
                    reply = await conn.read_response()
            except _redis.exceptions.ResponseError as exc:
                _refused(ref, index, prefix, exc, step)
                raise
            tier = ref()
            if tier is None or tier._closed:
                return
            tier._listener_state(index, True)
            del tier
            delay = 0.02
            beat = _Heartbeat()
            while True:
                msg = await conn.read_response(timeout=0.1)  # None: nothing came meanwhile
                tier = ref()
                if tier is None or tier._closed:
                    return
                if msg is not None:
                    beat.heard()
                    names = _notice(msg)
                    if names is not _NO_NOTICE:
                        tier._invalidate(names)
                elif beat.ping_due():
                    await conn.send_command("PING")
                del tier
        except Exception:
            pass
        finally:
            if conn is not None:
                try:
                    await conn.disconnect(nowait=True)
                except Exception:
                    pass
        tier = ref()
        if tier is None or tier._closed:
            return
        tier._listener_state(index, False)
        await tier._refresh_topology()
        del tier
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))
        delay = min(delay * 2, _LISTEN_RETRY_CAP)


async def _arenew(script, client, lname, token, lease_ms):
    """Extend the lease every third of it until cancelled; give up once it is lost."""
    while True:
        await asyncio.sleep(lease_ms / 3000.0)
        try:
            if not await script.acall(keys=[lname], args=[token, lease_ms], client=client):
                return
        except _REMOTE_ERRORS:
            continue
