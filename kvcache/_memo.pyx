# cython: language_level=3, freethreading_compatible=False
# The compiled call paths of kvcache's memoizing decorators: they reach the engine's table
# directly through kvcache/_core.pxd (no Python-level cache protocol per call).
#
# _lru_cache_wrapper follows CPython's Modules/_functoolsmodule.c lru_cache:
# - three paths chosen at construction: maxsize == 0 only counts misses, maxsize None never
#   evicts, a positive maxsize evicts the least recently used entry;
# - the key is built as functools builds it (a lone exact int or str is its own key), hashed
#   exactly once per call; the stored hash serves the insertion and any later eviction;
# - the user function runs outside any critical section; after it returns, if the table
#   changed meanwhile (its version moved) the key is looked up again: if a recursive call or
#   another thread stored it, that entry is kept and nothing is stored (bpo-35780), so
#   concurrent misses each call the function, exactly as functools does; if the table did
#   not change, the slot found by the first lookup is still the right one;
# - exceptions from the function propagate untouched (no lookup exception is pending, so
#   nothing is chained to them) and nothing is stored;
# - evicted keys and values are released only once the table is consistent (rule 3 above).
#
# MemoBase gives kvcache.memoize the same hit path and a compiled miss path with single
# flight: the first thread to miss a key (the leader) computes it; others that miss it
# meanwhile wait for the leader's result or exception.  Computations in progress live in the
# memo's `pending` dict (key -> _Flight), never in the table: the cache the user sees holds
# finished results only (no method of it can show, hand out or remove a computation), and
# the hit path is a plain table lookup.  The table lookup and the `pending` check are two
# steps; a leader stores its result before it leaves `pending`, so a thread that missed the
# table looks it up again (under the memo's lock) when the table's version moved since.
# A thread that would wait for itself (a recursive call on the key it computes) or for a
# thread that waits for it (a cycle across threads) computes directly instead: a
# single-flight wait never deadlocks.  cache_invalidate and cache_clear mark the key's
# computation stale: its callers still get its outcome, but it is not stored, and a call
# after the invalidation starts a new computation.
# Counts: `misses` is the number of calls that ran the function; every other call (a table
# hit, or a wait for another caller's computation) is a hit.
# Coroutine functions take the Python path in decorators._AsyncMemo.

cimport cython
from cpython.dict cimport PyDict_Size
from cpython.list cimport PyList_GET_ITEM, PyList_SET_ITEM
from cpython.ref cimport PyObject, Py_DECREF
from libc.stdint cimport int32_t, int64_t, uint64_t
from cpython.tuple cimport PyTuple_New, PyTuple_GET_SIZE, PyTuple_GET_ITEM, PyTuple_SET_ITEM
from cpython.ref cimport Py_INCREF
from cpython.object cimport PyObject_Hash, PyTypeObject, Py_TYPE
from cpython.number cimport PyNumber_AsSsize_t
from cpython.unicode cimport PyUnicode_CheckExact
from cpython.long cimport PyLong_CheckExact
from cpython.pythread cimport PyThread_get_thread_ident

cdef extern from "Python.h":
    object PyMethod_New(object func, object self)   # Cython's pxd still has the 3-argument form
    int Py_ReprEnter(object)
    void Py_ReprLeave(object)
    # the attribute a type's MRO gives for a name (borrowed; compared by identity only)
    PyObject* _PyType_Lookup(PyTypeObject* type, object name)
    PyObject* PyDict_SetDefault(object d, object key, object default) except NULL

import math
import operator
import threading
import types

from kvcache._core cimport *

from kvcache._core import Cache

cdef object _kwd_mark = object()
cdef object _MARKER = object()   # separates positional from keyword arguments in a key


# tp_call.  A Cython `def __call__(self, *args, **kwargs)` allocates a fresh kwargs dict on
# every call, a cost CPython's C wrapper does not pay.  The wrappers keep their `def __call__`
# (for introspection), but their type's tp_call slot points straight at the cdef
# implementations below, which take (args, kwds-or-NULL) as CPython hands them over.
cdef extern from *:
    """
    static void kv_install_tp_call(PyObject* type, void* fn) {
        ((PyTypeObject*)type)->tp_call = (ternaryfunc)fn;
        PyType_Modified((PyTypeObject*)type);
    }
    static PyObject* kv_call(PyObject* f, PyObject* a, PyObject* k) { return PyObject_Call(f, a, k); }

    /* Vectorcall: CPython then calls a wrapper without packing its arguments into a tuple
       (functools' C lru_cache has no vectorcall, so this is where a hit on f(x) gains). */
    static void kv_install_vectorcall(PyObject* type, Py_ssize_t offset, int on) {
        PyTypeObject* t = (PyTypeObject*)type;
        if (on) {
            t->tp_vectorcall_offset = offset;
            t->tp_flags |= Py_TPFLAGS_HAVE_VECTORCALL;
        } else {
            t->tp_flags &= ~Py_TPFLAGS_HAVE_VECTORCALL;
        }
        PyType_Modified(t);
    }
    static Py_ssize_t kv_vectorcall_offset(PyObject* type) {
        return ((PyTypeObject*)type)->tp_vectorcall_offset;
    }
    static PyObject* kv_vcall(PyObject* f, PyObject** a, size_t nargsf) {
        return PyObject_Vectorcall(f, (PyObject* const*)a, nargsf, NULL);
    }
    #define kv_vc_nargs(n) PyVectorcall_NARGS(n)
    static PyObject* kv_vector_tuple(PyObject** a, Py_ssize_t n) {
        PyObject* t = PyTuple_New(n);
        if (t == NULL) return NULL;
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_INCREF(a[i]);
            PyTuple_SET_ITEM(t, i, a[i]);
        }
        return t;
    }
    """
    void kv_install_tp_call(object type, void* fn)
    object kv_call(object f, object a, PyObject* k)
    void kv_install_vectorcall(object type, Py_ssize_t offset, int on)
    Py_ssize_t kv_vectorcall_offset(object type)
    object kv_vcall(object f, PyObject** a, size_t nargsf)
    Py_ssize_t kv_vc_nargs(size_t nargsf)
    tuple _vector_tuple "kv_vector_tuple" (PyObject** a, Py_ssize_t n)


cdef inline hash_t _mix(Py_hash_t h, uint64_t seed) noexcept nogil:
    return mix_hash(h, seed)


cdef inline object _fast_key(tuple args, dict kwds, bint typed):
    """Build functools' cache key for a call: args, kwd_mark, k1, v1, ..., then types if typed."""
    cdef Py_ssize_t nargs = PyTuple_GET_SIZE(args)
    cdef Py_ssize_t nkw = 0
    if kwds is not None:
        nkw = PyDict_Size(kwds)
    if not typed and nkw == 0:
        if nargs == 1:
            a = <object>PyTuple_GET_ITEM(args, 0)
            # common scalar keys stand for themselves, saving the tuple
            if PyUnicode_CheckExact(a) or PyLong_CheckExact(a):
                return a
        return args
    return _full_key(args, kwds, nargs, nkw, typed)


cdef object _full_key(tuple args, dict kwds, Py_ssize_t nargs, Py_ssize_t nkw, bint typed):
    cdef Py_ssize_t size = nargs, pos = 0, i
    if nkw:
        size += 2 * nkw + 1
    if typed:
        size += nargs + nkw
    key = PyTuple_New(size)
    for i in range(nargs):
        item = <object>PyTuple_GET_ITEM(args, i)
        Py_INCREF(item)
        PyTuple_SET_ITEM(key, pos, item)
        pos += 1
    if nkw:
        Py_INCREF(_kwd_mark)
        PyTuple_SET_ITEM(key, pos, _kwd_mark)
        pos += 1
        # keyword order is significant, as in functools (PEP 468)
        for k, v in kwds.items():
            if pos + 2 > size:
                raise RuntimeError("keyword arguments changed during the call")
            Py_INCREF(k)
            PyTuple_SET_ITEM(key, pos, k)
            Py_INCREF(v)
            PyTuple_SET_ITEM(key, pos + 1, v)
            pos += 2
    if typed:
        for i in range(nargs):
            t = type(<object>PyTuple_GET_ITEM(args, i))
            Py_INCREF(t)
            PyTuple_SET_ITEM(key, pos, t)
            pos += 1
        if nkw:
            for v in kwds.values():
                if pos >= size:
                    raise RuntimeError("keyword arguments changed during the call")
                t = type(v)
                Py_INCREF(t)
                PyTuple_SET_ITEM(key, pos, t)
                pos += 1
    if pos != size:
        raise RuntimeError("keyword arguments changed during the call")
    return key


cdef object _lru_call(_lru_cache_wrapper self, tuple args, dict kwds):
    """The whole lru_cache call from a tuple and a dict: key, then _lru_run."""
    if self.cache is None:
        self.misses += 1
        return kv_call(self.func, args, NULL if kwds is None else <PyObject*>kwds)
    return _lru_run(self, _fast_key(args, kwds, self.typed), args, kwds, NULL, 0)


cdef object _lru_run(_lru_cache_wrapper self, object key, tuple args, dict kwds,
                     PyObject** vargs, size_t nargsf):
    """One hash, lookup, call on a miss (with vargs when given, else args/kwds), store."""
    cdef Cache c = self.cache
    cdef Py_ssize_t slot, e
    cdef hash_t h
    cdef uint64_t version
    h = _mix(PyObject_Hash(key), c.t.seed)
    with cython.critical_section(c):
        e = table_find(c, key, h, &slot)
        if e >= 0:
            order_hit(&c.o, &c.t, <entry_t>e)
            self.hits += 1
            return <object>PyList_GET_ITEM(c._kv, 2 * e + 1)
        self.misses += 1
        version = c._version
    if vargs != NULL:
        result = kv_vcall(self.func, vargs, nargsf)
    else:
        result = kv_call(self.func, args, NULL if kwds is None else <PyObject*>kwds)
    _table_store(c, key, h, result, version, slot)
    return result


cdef object _lru_tp_call(PyObject* self, PyObject* args, PyObject* kwds):
    return _lru_call(<_lru_cache_wrapper>self, <tuple>args,
                     None if kwds == NULL else <dict>kwds)


cdef dict _vector_kwds(PyObject** args, Py_ssize_t n, PyObject* kwnames):
    """The keyword arguments of a vectorcall as a dict (None if there are none), in order."""
    if kwnames == NULL or PyTuple_GET_SIZE(<tuple>kwnames) == 0:
        return None
    kwds = {}
    for i in range(PyTuple_GET_SIZE(<tuple>kwnames)):
        kwds[<object>PyTuple_GET_ITEM(<tuple>kwnames, i)] = <object>args[n + i]
    return kwds


cdef inline bint _lone_scalar(Py_ssize_t n, PyObject** args, PyObject* kwnames):
    """Is this call f(x), x an exact int or str -- a key that stands for itself?"""
    if n != 1 or (kwnames != NULL and PyTuple_GET_SIZE(<tuple>kwnames) != 0):
        return False
    return PyUnicode_CheckExact(<object>args[0]) or PyLong_CheckExact(<object>args[0])


cdef object _lru_vectorcall(PyObject* self, PyObject** args, size_t nargsf, PyObject* kwnames):
    cdef _lru_cache_wrapper w = <_lru_cache_wrapper>self
    cdef Py_ssize_t n = kv_vc_nargs(nargsf)
    if not w.typed and w.cache is not None and _lone_scalar(n, args, kwnames):
        return _lru_run(w, <object>args[0], None, None, args, nargsf)
    return _lru_call(w, _vector_tuple(args, n), _vector_kwds(args, n, kwnames))


cdef object _memo_vectorcall(PyObject* self, PyObject** args, size_t nargsf, PyObject* kwnames):
    cdef MemoBase m = <MemoBase>self
    cdef Py_ssize_t n = kv_vc_nargs(nargsf)
    if not m.typed and m.keyfunc is None and _lone_scalar(n, args, kwnames):
        return _memo_run(m, None, <object>args[0], None, None, args, n)
    return _memo_invoke(m, None, _vector_tuple(args, n), _vector_kwds(args, n, kwnames))


cdef object _memo_tp_call(PyObject* self, PyObject* args, PyObject* kwds):
    return _memo_invoke(<MemoBase>self, None, <tuple>args,
                        None if kwds == NULL else <dict>kwds)


cdef inline object _table_store(Cache c, object key, hash_t h, object value,
                                uint64_t version=0, Py_ssize_t known_slot=-1):
    """Store value under key (hash h) unless the key is already there; evict one entry if full.

    `known_slot` is where the lookup made at `version` would insert the key: while the table
    is unchanged (same version) the key is still absent and the slot still right.  Only
    key.__eq__ (when the table changed meanwhile) runs Python code here.
    """
    cdef Py_ssize_t slot, e
    cdef PyObject* evk = NULL              # an evicted pair, released once the table is
    cdef PyObject* evv = NULL              # consistent again
    if not plain_store(c):
        # a subclass's popitem or a user choice function decides what goes: the mapping protocol
        if key not in c:
            try:
                c[key] = value
            except ValueError:
                pass  # value too large
        return None
    # The one place where the decorators insert after a lookup.  Growth allocates, and other
    # threads (or finalizers) may run while it does: the lookup is redone after it.
    with cython.critical_section(c):
        while True:
            if known_slot >= 0 and c._version == version:
                slot = known_slot
            else:
                e = table_find(c, key, h, &slot)
                if e >= 0:
                    return None   # stored meanwhile (recursion or another thread): keep it
            if cache_insert_new(c, slot, h, key, value, &evk, &evv) >= 0:
                break
            c._grow_for_one()     # may run Python code: look the key up again
            known_slot = -1
    release_pair(evk, evv)
    return None


cdef int _table_discard(Cache c, object key, hash_t h, object value) except -1:
    """Remove key's entry if it still holds `value` (a stored result that became stale)."""
    cdef Py_ssize_t slot, e
    cdef object old_key = None, old_value = None      # released after the critical section
    if not c._native_delitem:
        # a subclass's __delitem__ sees every removal
        if c.peek(key, _MARKER) is value:
            try:
                del c[key]
            except KeyError:
                pass
        return 0
    with cython.critical_section(c):
        e = table_find(c, key, h, &slot)
        if e >= 0 and <object>PyList_GET_ITEM(c._kv, 2 * e + 1) is value:
            old_value = c._remove(<entry_t>e, slot)
            old_key = c._removed_key
            c._removed_key = None
    return 0


@cython.final
@cython.auto_pickle(False)
cdef class _lru_cache_wrapper:
    """functools.lru_cache's wrapper, compiled over the engine's LRU table.

    Thread-safety: as CPython's C version -- hit and miss counts are exact, the function runs
    outside any lock, and concurrent misses on one key each call it.
    """

    cdef object func
    cdef Cache cache              # None when nothing is cached (maxsize == 0)
    cdef object maxsize
    cdef bint typed
    cdef Py_ssize_t hits, misses
    cdef object cache_info_type
    cdef void* vectorcall         # read by CPython at tp_vectorcall_offset
    cdef dict __dict__
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        self.vectorcall = <void*>_lru_vectorcall

    def __init__(self, func, maxsize, typed, cache_info_type):
        if not callable(func):
            raise TypeError("the first argument must be callable")
        if maxsize is None:
            self.cache = Cache(math.inf)
        elif isinstance(maxsize, int):
            # as functools: an index-sized int (True is 1; 2**70 raises OverflowError)
            maxsize = PyNumber_AsSsize_t(maxsize, OverflowError)
            if maxsize < 0:
                maxsize = 0
            self.cache = LRUCache(maxsize) if maxsize > 0 else None
        else:
            raise TypeError("maxsize should be integer or None")
        self.func = func
        self.maxsize = maxsize
        self.typed = bool(typed)
        self.cache_info_type = cache_info_type
        self.hits = self.misses = 0

    def __call__(self, *args, **kwargs):
        return _lru_call(self, args, kwargs)

    def cache_info(self):
        """Report cache statistics."""
        currsize = 0 if self.cache is None else len(self.cache)
        return self.cache_info_type(self.hits, self.misses, self.maxsize, currsize)

    def cache_clear(self):
        """Clear the cache and cache statistics."""
        self.hits = self.misses = 0
        if self.cache is not None:
            self.cache.clear()

    @property
    def _cache(self):
        """The engine's table behind the wrapper (None for maxsize 0), for tests and debugging."""
        return self.cache

    def __get__(self, obj, objtype):
        # bind like a function, so methods work
        if obj is None:
            return self
        return PyMethod_New(self, obj)

    def __reduce__(self):
        return self.__qualname__

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self



@cython.final
@cython.freelist(16)
@cython.auto_pickle(False)
cdef class _Flight:
    """One computation in progress: its leader thread, then its outcome.

    The leader records the outcome, sets `done`, then sets `event` if a waiter made one; a
    waiter installs `event`, then checks `done` before waiting.  Each of these steps runs
    without Python code in between, so under the GIL no wake-up is lost and the leader
    needs no lock (the module is not declared free-threading compatible).
    """
    cdef unsigned long owner
    cdef bint done
    cdef bint stale            # invalidated while computing: the outcome is not stored
    cdef object result
    cdef object error
    cdef object event          # a threading.Event, made by the first waiter


cdef inline _Flight _new_flight():
    cdef _Flight f = _Flight.__new__(_Flight)
    f.owner = PyThread_get_thread_ident()
    return f


cdef object _threading_Event = None


@cython.auto_pickle(False)
cdef class MemoBase:
    """The compiled call path of kvcache.memoize: hits, and misses with single flight."""

    cdef readonly object func
    cdef readonly Cache cache
    cdef readonly Py_ssize_t hits, misses
    cdef bint typed
    cdef bint single_flight
    cdef object keyfunc
    cdef dict pending            # key -> _Flight being computed
    cdef dict waiting            # thread id -> _Flight it waits for
    cdef public object _attrname  # method mode: the attribute name (set by __set_name__)
    # The Python layer's slow paths, given at construction (never looked up by name).  Plain
    # functions called with the memo first, not bound methods: a memo holding its own bound
    # method would be a reference cycle, freed only by the cycle collector.
    cdef object unbound           # (memo) -> what class access returns (method mode)
    cdef object instance_memo     # (memo, obj) -> the instance's own memo, made on first use
    cdef object async_invoke      # (memo, owner, args, kwargs) -> awaitable; None: not a coroutine
    # Guards pending and waiting.  A mutex rather than a critical section: a thread holds it
    # across a key's __hash__/__eq__, which may release the GIL, and a critical section is
    # suspended whenever its thread blocks.  The engine's one kind of lock besides critical
    # sections (VectorCache holds the same kind across its GIL-free batch loops).
    cdef cython.pymutex lock
    cdef unsigned long lock_owner # the thread holding `lock` (0: none), to refuse reentry
    cdef void* vectorcall         # read by CPython at tp_vectorcall_offset

    def __cinit__(self, *args, **kwargs):
        self.vectorcall = <void*>_memo_vectorcall
        self.pending = {}
        self.waiting = {}

    def __init__(self, func, cache, typed, key, single_flight=True, *, unbound=None,
                 instance_memo=None, async_invoke=None):
        if not isinstance(cache, Cache):
            raise TypeError("memoize needs a kvcache cache")
        self.unbound = unbound
        self.instance_memo = instance_memo
        self.async_invoke = async_invoke
        self.func = func
        self.cache = cache
        self.typed = bool(typed)
        self.keyfunc = key
        self.single_flight = bool(single_flight)

    def __call__(self, *args, **kwargs):
        return _memo_invoke(self, None, args, kwargs)

    def __get__(self, obj, objtype):
        # Method mode (defined in a class body): each instance has its own memo, kept in the
        # instance's __dict__; the bound object holds the instance only while it lives.
        if self._attrname is None:
            return self
        if obj is None:
            return self.unbound(self)
        return _memo_bind(self, obj)

    def _invoke(self, owner, tuple args, dict kwargs):
        """Call through the cache; `owner` (not None) is passed first to the function only."""
        return _memo_invoke(self, owner, args, kwargs)

    def _make_key(self, tuple args, dict kwargs):
        if self.keyfunc is not None:
            return kv_call(self.keyfunc, args, NULL if kwargs is None else <PyObject*>kwargs)
        return _fast_key(args, kwargs, self.typed)

    def _lookup(self, key):
        """Return (True, value) on a hit, counted; (False, None) on a miss, left to the caller
        to count as a hit (it shares a computation) or a miss (it runs the function)."""
        cdef Cache c = self.cache
        cdef Py_ssize_t slot, e
        cdef hash_t h = _mix(PyObject_Hash(key), c.t.seed)
        cdef double now = expiry_clock(c)
        with cython.critical_section(c):
            e = table_find(c, key, h, &slot)
            if e >= 0 and not (c._exp != NULL and entry_dead(c, e, now)):
                order_hit(&c.o, &c.t, <entry_t>e)
                self.hits += 1
                return True, c._kv[2 * e + 1]
        return False, None

    def _count(self, bint hit):
        """Count one call that _lookup missed: a hit (it shared a computation) or a miss."""
        if hit:
            self.hits += 1
        else:
            self.misses += 1

    def _forget_pending(self, key=_MARKER):
        """Mark the computation of key (of every key by default) stale: not to be stored.

        Its callers still get its outcome; a later call starts a new computation.
        """
        cdef dict old
        cdef dict fresh = {}       # allocated before the lock: the GC may run finalizers
        _memo_lock(self)
        try:
            if key is _MARKER:
                old, self.pending = self.pending, fresh
                for flight in old.values():
                    (<_Flight>flight).stale = True
            else:
                flight = self.pending.pop(key, None)
                if flight is not None:
                    (<_Flight>flight).stale = True
        finally:
            _memo_unlock(self)

    def _store(self, key, value):
        """Store value unless the key is present; raise ValueError if nothing fits (maxsize 0)."""
        cdef Cache c = self.cache
        if c._max_entries < 1:
            raise ValueError("value too large")
        _table_store(c, key, _mix(PyObject_Hash(key), c.t.seed), value)

    def _call(self, owner, tuple args, dict kwargs):
        if owner is not None:
            args = (owner,) + args
        return kv_call(self.func, args, NULL if kwargs is None else <PyObject*>kwargs)

    def _reset_counts(self):
        self.hits = self.misses = 0


MEMO_ATTR = "__kvcache_memos"    # the instance attribute holding its memos (decorators.py)
cdef str _MEMO_ATTR = MEMO_ATTR


cdef object _memo_bind(MemoBase self, object obj):
    cdef _memo_bound b
    memo = None
    d = getattr(obj, "__dict__", None)
    if type(d) is dict:
        memos = (<dict>d).get(_MEMO_ATTR)
        if type(memos) is dict:
            memo = (<dict>memos).get(self)
    if memo is None:
        memo = self.instance_memo(self, obj)  # first use on this instance (Python)
    b = _memo_bound.__new__(_memo_bound)
    b.__self__ = obj
    b._memo = <MemoBase?>memo
    return b


@cython.final
@cython.freelist(8)
@cython.auto_pickle(False)
cdef class _memo_bound:
    """A `@memoize` method bound to an instance; the instance's own memo does the caching."""

    cdef readonly object __self__
    cdef MemoBase _memo

    def __call__(self, *args, **kwargs):
        return _memo_bound_call(self, args, kwargs)

    def __getattr__(self, name):
        return getattr(self._memo, name)

    @property
    def __func__(self):
        return self._memo.func

    @property
    def __wrapped__(self):
        return self._memo.func

    @property
    def __signature__(self):
        # a bound method's: without it inspect follows __wrapped__ and shows the instance's
        # parameter too.  AttributeError (not ValueError) lets inspect try its other ways.
        import inspect
        try:
            return inspect.signature(types.MethodType(self._memo.func, self.__self__))
        except (TypeError, ValueError):
            raise AttributeError("__signature__") from None

    @property
    def __doc__(self):
        return getattr(self._memo.func, "__doc__", None)

    def __repr__(self):
        return "<memoize %r of %s>" % (self._memo.func, object.__repr__(self.__self__))


cdef object _memo_bound_call(_memo_bound self, tuple args, dict kwargs):
    if self._memo.async_invoke is not None:
        return self._memo.async_invoke(self._memo, self.__self__, args, kwargs)
    return _memo_invoke(self._memo, self.__self__, args, kwargs)


cdef object _memo_bound_tp_call(PyObject* self, PyObject* args, PyObject* kwds):
    return _memo_bound_call(<_memo_bound>self, <tuple>args, None if kwds == NULL else <dict>kwds)


cdef inline int _memo_lock(MemoBase self) except -1:
    cdef unsigned long me = PyThread_get_thread_ident()
    if self.lock_owner == me:
        # a key's __hash__/__eq__ (run under the lock) called back into this memo: waiting
        # for the lock would never end
        raise RuntimeError("memoize: a key's __hash__ or __eq__ called the memoized function")
    self.lock.acquire()              # releases the GIL while it waits: the holder may need it
    self.lock_owner = me
    return 0


cdef inline void _memo_unlock(MemoBase self) noexcept:
    self.lock_owner = 0
    self.lock.release()


cdef inline object _memo_compute(MemoBase self, object owner, tuple args, dict kwargs):
    if owner is not None:
        args = (owner,) + args
    return kv_call(self.func, args, NULL if kwargs is None else <PyObject*>kwargs)


cdef bint _memo_would_deadlock(MemoBase self, _Flight flight, unsigned long me) except -1:
    """Does waiting for `flight` wait (through other waiting threads) for this thread?"""
    cdef Py_ssize_t steps = 0
    cdef object waited
    while steps <= len(self.waiting) + 1:
        if flight.owner == me:
            return True
        waited = self.waiting.get(flight.owner)
        if waited is None:
            return False
        flight = <_Flight>waited
        steps += 1
    return False


cdef object _memo_invoke(MemoBase self, object owner, tuple args, dict kwargs):
    if self.keyfunc is None:
        key = _fast_key(args, kwargs, self.typed)
    else:
        key = kv_call(self.keyfunc, args, NULL if kwargs is None else <PyObject*>kwargs)
    return _memo_run(self, owner, key, args, kwargs, NULL, 0)


cdef object _memo_run(MemoBase self, object owner, object key, tuple args, dict kwargs,
                      PyObject** vargs, Py_ssize_t nvargs):
    """Look key up; on a miss compute with args/kwargs (args None: built from vargs)."""
    cdef Cache c = self.cache
    cdef Py_ssize_t slot = -1, e
    cdef hash_t h
    cdef uint64_t version
    h = _mix(PyObject_Hash(key), c.t.seed)
    cdef double now = expiry_clock(c)    # the timer runs before the lookup
    with cython.critical_section(c):
        e = table_find(c, key, h, &slot)
        if e >= 0 and not (c._exp != NULL and entry_dead(c, e, now)):
            order_hit(&c.o, &c.t, <entry_t>e)
            self.hits += 1
            return <object>PyList_GET_ITEM(c._kv, 2 * e + 1)
        version = c._version
    if args is None:
        args = _vector_tuple(vargs, nvargs)
    if not self.single_flight:
        self.misses += 1
        result = _memo_compute(self, owner, args, kwargs)
        _table_store(c, key, h, result, version, slot)
        return result
    return _memo_single_flight(self, owner, key, h, version, slot, now, args, kwargs)


cdef object _memo_wait(MemoBase self, object owner, _Flight flight, tuple args, dict kwargs):
    """Wait for another caller's computation of this key; compute directly if that would deadlock."""
    cdef unsigned long me = PyThread_get_thread_ident()
    cdef int role = 0          # 0 done already, 1 wait, 2 compute directly
    _memo_lock(self)
    try:
        if not flight.done:
            if _memo_would_deadlock(self, flight, me):
                role = 2
            else:
                self.waiting[me] = flight
                role = 1
        if role == 2:
            self.misses += 1
        else:
            self.hits += 1     # served by the leader's computation, not by running the function
    finally:
        _memo_unlock(self)
    if role == 2:
        return _memo_compute(self, owner, args, kwargs)
    if role == 1:
        try:
            if flight.event is None:
                event = _threading_Event()      # Python code: the leader may finish meanwhile
                if flight.event is None:
                    flight.event = event
            if not flight.done:
                flight.event.wait()
        finally:
            _memo_lock(self)
            try:
                del self.waiting[me]
            finally:
                _memo_unlock(self)
    if flight.error is not None:
        raise flight.error
    return flight.result


cdef object _memo_single_flight(MemoBase self, object owner, object key, hash_t h,
                                uint64_t version, Py_ssize_t known_slot, double now,
                                tuple args, dict kwargs):
    """After a table miss: join the key's computation in `pending`, or lead a new one."""
    cdef Cache c = self.cache
    cdef Py_ssize_t slot, e
    cdef _Flight flight = _new_flight()     # allocated before the lock: the GC may run finalizers
    cdef object existing = None
    cdef object found = _MARKER
    cdef bint stored = False
    _memo_lock(self)
    try:
        if c._version != version:
            # The table changed since our lookup: a leader may have stored the key and left
            # `pending` meanwhile.  (A leader stores before it leaves, so with the version
            # unchanged, absent from the table means still pending or not started.)
            with cython.critical_section(c):
                e = table_find(c, key, h, &slot)
                if e >= 0 and not (c._exp != NULL and entry_dead(c, e, now)):
                    order_hit(&c.o, &c.t, <entry_t>e)
                    self.hits += 1
                    found = <object>PyList_GET_ITEM(c._kv, 2 * e + 1)
                else:
                    version = c._version
                    known_slot = slot
        if found is _MARKER:
            existing = self.pending.get(key) if self.pending else None
            if existing is None:
                self.pending[key] = flight
                self.misses += 1
    finally:
        _memo_unlock(self)
    if found is not _MARKER:
        return found
    if existing is not None:
        return _memo_wait(self, owner, <_Flight>existing, args, kwargs)
    try:
        result = _memo_compute(self, owner, args, kwargs)
    except BaseException as exc:
        flight.error = exc
        _memo_finish(self, key, h, flight, False)
        raise
    flight.result = result
    try:
        if not flight.stale:
            _table_store(c, key, h, result, version, known_slot)
            stored = True
    finally:
        _memo_finish(self, key, h, flight, stored)
    return result


cdef int _memo_finish(MemoBase self, object key, hash_t h, _Flight flight,
                      bint stored) except -1:
    """Retire the leader's flight and wake its waiters (outcome already recorded)."""
    cdef bint stale
    _memo_lock(self)
    try:
        if self.pending.get(key) is flight:
            del self.pending[key]
        stale = flight.stale
    finally:
        _memo_unlock(self)
    try:
        if stored and stale:
            # invalidated while the result was being stored: take it out again
            _table_discard(self.cache, key, h, flight.result)
    finally:
        flight.done = True
        event = flight.event
        if event is not None:
            event.set()
    return 0


# -- cachetools.cached (no lock, no info): the call path of decorators._Cached ----------------

cdef object _plain_keyfunc = None   # keys.hashkey: without keywords its key is the args tuple


def register_plain_keyfunc(fn):
    """Tell the compiled path which key function builds (an equal of) the args tuple."""
    global _plain_keyfunc
    _plain_keyfunc = fn


@cython.auto_pickle(False)
cdef class CachedBase:
    """Compiled call path of `cached(cache)` without lock or info (a Python subclass adds the rest)."""

    cdef public object cache
    cdef public object cache_key
    cdef public object _func

    def __call__(self, *args, **kwargs):
        return _cached_tp_call(<PyObject*>self, <PyObject*>args, <PyObject*>kwargs)


cdef object _cached_tp_call(PyObject* self, PyObject* args, PyObject* kwds):
    cdef CachedBase w = <CachedBase>self
    keyfunc = w.cache_key
    if keyfunc is _plain_keyfunc and (kwds == NULL or PyDict_Size(<object>kwds) == 0):
        key = <object>args      # what hashkey(*args) equals, hashes like, and cachetools 8 returns
    else:
        key = kv_call(keyfunc, <object>args, kwds)
    return _mapping_memo_call(w.cache, key, w._func, <tuple>args, kwds)


cdef object _mapping_memo_call(object cache, object key, object func, tuple args, PyObject* kwds):
    """cachetools' basic wrapper body: look key up in cache, else call func(*args) and store."""
    cdef Cache c
    cdef Py_ssize_t slot = -1, e
    cdef hash_t h
    cdef uint64_t version
    if isinstance(cache, Cache) and (<Cache>cache)._native_getitem and \
            (<Cache>cache)._native_missing and (<Cache>cache)._exp == NULL:
        c = <Cache>cache
        h = _mix(PyObject_Hash(key), c.t.seed)
        with cython.critical_section(c):
            e = table_find(c, key, h, &slot)
            if e >= 0:
                c._hits += 1
                order_touch(&c.o, &c.t, <entry_t>e)
                return <object>PyList_GET_ITEM(c._kv, 2 * e + 1)
            c._misses += 1
            version = c._version
        val = kv_call(func, args, kwds)
        if c._version == version and plain_store(c) and c._on_evict is None:
            _table_store(c, key, h, val, version, slot)     # the key is still absent
        else:
            # the table changed meanwhile (maybe the key was stored: cachetools overwrites
            # it), or the cache has sizes, an eviction hook or callback: the mapping protocol
            try:
                c[key] = val
            except ValueError:
                pass            # value too large
        return val
    try:
        return cache[key]
    except KeyError:
        pass                    # leave the handler: the call must not chain to this KeyError
    val = kv_call(func, args, kwds)
    try:
        cache[key] = val
    except ValueError:
        pass
    return val


# -- cachetools.cachedmethod: the bound method's call path ---------------------------------------

cdef object _plain_methodkey = None    # keys.methodkey: without keywords, the args tuple


def register_plain_methodkey(fn):
    """Tell the compiled path which method key function builds (an equal of) the args tuple."""
    global _plain_methodkey
    _plain_methodkey = fn


@cython.auto_pickle(False)
cdef class CachedMethodDescriptorBase:
    """Base of the `@cachedmethod` descriptor: its fields and the bound wrappers it makes."""

    cdef public object _method, _cache, _key, _lock, _cond, _attrname, _bound
    cdef public bint _info, _plain
    cdef public object _state_type   # the per-wrapper state of a call with a lock, condition or info
    # The Python layer's slow paths, given at construction (never looked up by name), as
    # plain functions called with the descriptor first (no reference cycle through self):
    cdef object get_slow          # (desc, obj) -> every access but an instance's own first one
    cdef object call_slow         # (desc, bound, args, kwargs) -> a call with a lock, condition or info

    def __init__(self, get_slow, call_slow):
        self.get_slow = get_slow
        self.call_slow = call_slow

    def __get__(self, obj, objtype):
        # An instance's first access through its class's own descriptor, with a plain dict:
        # the Python layer's first branch in C (store the wrapper under the name; of two
        # threads' first accesses, the first wrapper stored wins).  Later accesses find the
        # wrapper in the instance dict without calling the descriptor.
        name = self._attrname
        if name is not None and obj is not None and \
                _PyType_Lookup(Py_TYPE(obj), name) == <PyObject*>self:
            try:
                d = obj.__dict__
            except AttributeError:
                d = None
            if type(d) is dict:
                return <object>PyDict_SetDefault(d, name, self._bind(obj))
        return self.get_slow(self, obj)

    def _bind(self, obj):
        """Return a new wrapper of this method bound to obj (kept by the caller, not here)."""
        cdef CachedMethodBound b = (<type>self._bound).__new__(self._bound)
        b.__self__ = obj
        b._desc = self
        if self._state_type is not None:
            b._state = self._state_type()
        return b


@cython.auto_pickle(False)
cdef class CachedMethodBound:
    """Base of a `@cachedmethod` bound to an instance (the Python subclass adds the API)."""

    cdef readonly object __self__
    cdef readonly CachedMethodDescriptorBase _desc
    cdef readonly object _state   # hit counts and keys being computed (None for a plain call)

    def __call__(self, *args, **kwargs):
        return _cm_call(self, args, kwargs)


cdef object _cm_call(CachedMethodBound b, tuple args, dict kwds):
    cdef CachedMethodDescriptorBase desc = b._desc
    obj = b.__self__
    if not desc._plain:
        return desc.call_slow(desc, b, args, {} if kwds is None else kwds)   # lock, condition or info
    cache = kv_call(desc._cache, (obj,), NULL)
    keyfunc = desc._key
    if keyfunc is _plain_methodkey and (kwds is None or PyDict_Size(kwds) == 0):
        key = args
    else:
        key = kv_call(keyfunc, (obj,) + args, NULL if kwds is None else <PyObject*>kwds)
    return _mapping_memo_call(cache, key, desc._method, (obj,) + args,
                              NULL if kwds is None else <PyObject*>kwds)


cdef object _cm_tp_call(PyObject* self, PyObject* args, PyObject* kwds):
    return _cm_call(<CachedMethodBound>self, <tuple>args, None if kwds == NULL else <dict>kwds)


cdef class LRU(LRUCache):
    "LRU(size, callback=None)\n--\n\n" \
    """lru-dict's LRU: a dict of at most `size` items that evicts the least recently used.

    `callback(key, value)` is called for each eviction (not for del, pop, popitem or clear).
    `keys()`, `values()` and `items()` return lists, most recently used first; lookups
    (`[]`, `get`, `pop`, `setdefault`) count in `get_stats()`; `in` and `has_key` do not.
    """

    # lru-dict's LRU is no mapping: equal only to itself, and hashable
    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other

    def __hash__(self):
        return object.__hash__(self)

    def __init__(self, size, callback=None):
        "__init__($self, size, callback=None)\n--\n\n" \
        "Initialize the LRU (see the class for the parameters)."
        size = operator.index(size)
        if size <= 0:
            raise ValueError("Size should be a positive number")
        if callback is not None and not callable(callback):
            raise TypeError("parameter must be callable")
        self._setup(size, None, callback, None, None, None)

    def keys(self):
        """Return the keys as a list, most recently used first."""
        return list(_CacheIterator(self, 3))

    def values(self):
        """Return the values as a list, most recently used first."""
        return [v for k, v in self.items()]

    def items(self):
        """Return the (key, value) pairs as a list, most recently used first."""
        cdef Py_ssize_t i
        cdef entry_t e
        cdef entry_t* op
        cdef uint64_t version
        cdef int restarts = 0
        cdef list out
        while True:
            with cython.critical_section(self):
                version = self._version
                order = self._order_array()
                op = <entry_t*>cnp.PyArray_DATA(<cnp.ndarray>order)
                out = []
                # each pair allocates (the GC may run a finalizer that changes this cache):
                # the entry numbers hold only while the version does
                for i in range(len(order) - 1, -1, -1):
                    if self._version != version:
                        break
                    e = op[i]
                    out.append((self._kv[2 * e], self._kv[2 * e + 1]))
                else:
                    return out
            restarts += 1
            if restarts > MAX_RESTARTS:
                raise RuntimeError("LRU changed during items() too many times")

    def __iter__(self):
        return _CacheIterator(self, 3)

    def __reversed__(self):
        return _CacheIterator(self, 0)

    def has_key(self, key):
        """Return whether key is present (not counted as a use)."""
        return key in self

    def peek_first_item(self):
        """Return the most recently used (key, value) pair without touching it, or None."""
        with cython.critical_section(self):
            if self.t.count == 0:
                return None
            return (self._kv[2 * self.o.tail], self._kv[2 * self.o.tail + 1])

    def peek_last_item(self):
        """Return the least recently used (key, value) pair without touching it, or None."""
        with cython.critical_section(self):
            if self.t.count == 0:
                return None
            return (self._kv[2 * self.o.head], self._kv[2 * self.o.head + 1])

    def get_size(self):
        """Return the maximum number of items."""
        return self._maxsize

    def set_size(self, size):
        """Set the maximum number of items, evicting (with the callback) to fit."""
        size = operator.index(size)
        if size <= 0:
            raise ValueError("Size should be a positive number")
        self.resize(size)

    def set_callback(self, callback):
        """Set the function called with (key, value) for each eviction; None removes it."""
        if callback is not None and not callable(callback):
            raise TypeError("parameter must be callable")
        self._on_evict = callback

    def get_stats(self):
        """Return (hits, misses) of the lookups so far."""
        return (self._hits, self._misses)

    def pop(self, key, default=_MARKER):
        """Remove key and return its value (a counted lookup); default or KeyError if absent."""
        cdef Py_ssize_t slot, e
        cdef hash_t h = key_hash(self, key)
        cdef object k, v
        with cython.critical_section(self):
            e = table_find(self, key, h, &slot)
            if e >= 0:
                self._hits += 1
                v = self._remove(<entry_t>e, slot)
                k = self._removed_key
                self._removed_key = None
                return v
            self._misses += 1
        if default is _MARKER:
            raise KeyError(key)
        return default

    def setdefault(self, key, default=None):
        """Return key's value (a counted lookup); if absent, insert default and return it."""
        cdef object v = self.get(key, _MARKER)
        if v is not _MARKER:
            return v
        self[key] = default
        return default

    def popitem(self, least_recent=True):
        """Remove and return the least (or, with least_recent=False, most) recently used pair."""
        cdef entry_t e
        with cython.critical_section(self):
            if self.t.count == 0:
                raise KeyError("popitem(): LRU dict is empty") from None
            e = self.o.head if least_recent else self.o.tail
            value = self._remove(e, -1)
            key = self._removed_key
            self._removed_key = None
            return (key, value)

    def clear(self):
        """Remove every item and reset the statistics."""
        LRUCache.clear(self)
        self._hits = self._misses = 0

    def __repr__(self):
        if Py_ReprEnter(self) != 0:
            return "{...}"
        try:
            return repr(dict(reversed(self.items())))
        finally:
            Py_ReprLeave(self)

    def __reduce__(self):
        fn, args, state = LRUCache.__reduce__(self)
        return (_rebuild_lru, (self._maxsize, self._on_evict, type(self)), state)


def _rebuild_lru(size, callback, cls=None):
    """Create an empty LRU of `cls` (unpickling and copying; older pickles give no class)."""
    if cls is None:
        return LRU(size, callback)
    obj = cls.__new__(cls)
    LRU._setup(obj, size, None, callback, None, None, None)
    return obj


kv_install_tp_call(_lru_cache_wrapper, <void*>_lru_tp_call)
kv_install_tp_call(MemoBase, <void*>_memo_tp_call)
kv_install_tp_call(_memo_bound, <void*>_memo_bound_tp_call)


cdef _install_vectorcalls():
    # the offset of each type's `vectorcall` field, measured on an instance
    cdef _lru_cache_wrapper lru = _lru_cache_wrapper.__new__(_lru_cache_wrapper)
    cdef MemoBase memo = MemoBase.__new__(MemoBase)
    kv_install_vectorcall(_lru_cache_wrapper, <char*>&lru.vectorcall - <char*><PyObject*>lru, 1)
    kv_install_vectorcall(MemoBase, <char*>&memo.vectorcall - <char*><PyObject*>memo, 1)

_install_vectorcalls()


def install_fast_call(cls):
    """Point a Python subclass of MemoBase or CachedBase at its compiled call path.

    A subclass that defines __call__ itself keeps it.
    """
    cdef void* fn
    if isinstance(cls, type) and issubclass(cls, MemoBase):
        base, fn = MemoBase, <void*>_memo_tp_call
    elif isinstance(cls, type) and issubclass(cls, CachedBase):
        base, fn = CachedBase, <void*>_cached_tp_call
    elif isinstance(cls, type) and issubclass(cls, CachedMethodBound):
        base, fn = CachedMethodBound, <void*>_cm_tp_call
    else:
        raise TypeError("expected a subclass of MemoBase, CachedBase or CachedMethodBound")
    for klass in cls.__mro__:
        if "__call__" in klass.__dict__ and klass is not base:
            kv_install_vectorcall(cls, 0, 0)     # its own __call__ must be what runs
            return
    kv_install_tp_call(cls, fn)
    if base is MemoBase:
        kv_install_vectorcall(cls, kv_vectorcall_offset(MemoBase), 1)


_threading_Event = threading.Event


# LRU.popitem() without arguments evicts like the engine's own: keep the fast insertion path.
register_native_popitem(LRU.popitem)


__all__ = ["LRU", "MEMO_ATTR", "CachedBase", "CachedMethodBound", "CachedMethodDescriptorBase",
           "MemoBase", "install_fast_call", "lru_cache_wrapper", "register_plain_keyfunc",
           "register_plain_methodkey"]
lru_cache_wrapper = _lru_cache_wrapper   # functools' name for the type; the Python layer's handle
