"""A pure-Python reference model of TinyLFUCache (adaptive W-TinyLFU), decision for decision.

It recomputes everything from first principles: MurmurHash64A of hash(key), the count-min
sketch with its halving, the two ghost tables and the window target, the three LRU regions,
and the engine's buffer growth (which sizes the sketch and the ghosts).  See
kvcache/_tinylfu.pxi for the algorithm this mirrors.
"""
import collections
import struct

from models import CacheModel

MASK64 = (1 << 64) - 1
WINDOW, PROBATION, PROTECTED = 0, 1, 2


def murmur64a_8(data, seed):
    """MurmurHash64A (Austin Appleby) of 8 bytes, as murmurhash's hash64 computes it."""
    m, r = 0xC6A4A7935BD1E995, 47
    h = (seed ^ (8 * m)) & MASK64
    (k,) = struct.unpack("<Q", data)
    k = (k * m) & MASK64
    k ^= k >> r
    k = (k * m) & MASK64
    h ^= k
    h = (h * m) & MASK64
    h ^= h >> r
    h = (h * m) & MASK64
    h ^= h >> r
    return h


def key_hash(key, seed):
    """The engine's entry hash: MurmurHash64A over hash(key) with the 64-bit seed."""
    return murmur64a_8(struct.pack("<q", hash(key)), seed & MASK64)


def mix(h):
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & MASK64
    h ^= h >> 33
    return h


def pow2_at_least(n, lo):
    p = lo
    while p < n:
        p <<= 1
    return p


class TinyLFUModel(CacheModel):
    """Adaptive W-TinyLFU on three OrderedDicts (least recent first)."""

    def __init__(self, maxsize, capacity=None, seed=1):
        super().__init__(maxsize)
        self.seed = seed
        self.hashes = {}
        self.regions = [collections.OrderedDict() for _ in range(3)]
        self.cap = int(maxsize)
        bufcap = capacity if capacity is not None else min(self.cap, 1024)
        self.bufcap = max(bufcap, 1)
        self.sketch = [0] * max(pow2_at_least(self.bufcap, 1), 256)
        self.ghosts = [self._new_ghost(), self._new_ghost()]       # window rejects, main evictions
        self.scount = 0
        self.nwin = self.nmev = 0
        self.wf = float(self.cap - int((1.0 - 0.01) * self.cap))
        self._set_cap(self.cap)
        self._targets()
        self._size_sample()

    # -- sizing --------------------------------------------------------------------------------

    def _new_ghost(self):
        gs = 16
        while gs * 8 < self.bufcap:
            gs <<= 1
        return [0] * gs

    def _size_sample(self):
        self.sample = 20 * max(self.bufcap, 32)

    def _set_cap(self, cap):
        self.cap = cap
        self.gcap = min(max(int(0.25 * cap), 1), 1 << 30)

    def _targets(self, demote=True):
        hi = float(self.cap - 1) if self.cap - 1 >= 1 else 1.0
        self.wf = min(max(self.wf, 1.0), hi)
        self.wmax = int(self.wf)
        self.protmax = int(0.8 * max(self.cap - self.wmax, 0))
        while demote and len(self.regions[PROTECTED]) > self.protmax:
            self._move(next(iter(self.regions[PROTECTED])), PROBATION)

    def _grow(self):
        new = self.bufcap * 2
        if new > self.cap > self.bufcap:
            new = self.cap
        self.bufcap = new
        old = self.sketch
        self.sketch = [old[j % len(old)] for j in range(max(pow2_at_least(new, 1), 256))]
        for i, table in enumerate(self.ghosts):
            fresh = self._new_ghost()
            for v in table:
                if v:
                    fresh[(v >> 32) & (len(fresh) - 1)] = v
            self.ghosts[i] = fresh
        self._size_sample()

    # -- the sketch ----------------------------------------------------------------------------

    def _cells(self, h):
        # one 8-word block per key; row i uses word 2i or 2i+1 of it
        c = mix(h)
        block = (c & (len(self.sketch) // 8 - 1)) * 8
        for i in range(4):
            x = c >> (32 + 8 * i)
            yield block + 2 * i + (x & 1), ((x >> 1) & 15) << 2

    def estimate(self, h):
        return min((self.sketch[w] >> off) & 15 for w, off in self._cells(h))

    def increment(self, h):
        for w, off in self._cells(h):
            if (self.sketch[w] >> off) & 15 != 15:
                self.sketch[w] += 1 << off
        self.scount += 1
        if self.scount >= self.sample:
            self.sketch = [(v >> 1) & 0x7777777777777777 for v in self.sketch]
            self.scount //= 2

    # -- ghosts --------------------------------------------------------------------------------

    def _ghost_put(self, which, h, clock):
        table = self.ghosts[which]
        table[(h >> 32) & (len(table) - 1)] = ((h >> 32) << 32) | 0x80000000 | (clock & 0x7FFFFFFF)

    def _ghost_take(self, which, h, clock):
        table = self.ghosts[which]
        i = (h >> 32) & (len(table) - 1)
        v = table[i]
        if v == 0 or (v >> 32) != (h >> 32):
            return False
        table[i] = 0
        return ((clock - v) & 0x7FFFFFFF) < self.gcap

    def _ghost_check(self, h):
        nw = float(min(self.nwin, self.gcap))
        nm = float(min(self.nmev, self.gcap))
        if self._ghost_take(0, h, self.nwin):
            d = nm / nw if nw > 0 else 1.0
            self.wf += max(d, 1.0)
            self._targets()
            return 1
        if self._ghost_take(1, h, self.nmev):
            d = nw / nm if nm > 0 else 1.0
            self.wf -= max(d, 1.0)
            self._targets()
            return 2
        return 0

    # -- regions -------------------------------------------------------------------------------

    def region_of(self, key):
        for r in range(3):
            if key in self.regions[r]:
                return r
        raise KeyError(key)

    def _move(self, key, r):
        self.regions[self.region_of(key)].pop(key)
        self.regions[r][key] = None

    def _touch(self, key):
        self.increment(self.hashes[key])
        r = self.region_of(key)
        if r == PROBATION:
            self._move(key, PROTECTED)
            while len(self.regions[PROTECTED]) > self.protmax:
                self._move(next(iter(self.regions[PROTECTED])), PROBATION)
        else:
            self.regions[r].move_to_end(key)

    # -- CacheModel hooks ----------------------------------------------------------------------

    def hit(self, key):
        self._touch(key)

    def updated(self, key):
        self._touch(key)

    def set(self, key, value):
        if key in self.data:
            self.data[key] = value
            self.updated(key)
            return []
        if self.maxsize < 1:
            raise ValueError("value too large")
        evicted = []
        if len(self.data) >= self.cap:
            evicted.append(self._evict())
        elif len(self.data) == self.bufcap:
            self._grow()
        self.data[key] = value
        self.inserted(key)
        return evicted

    def _evict(self):
        key = self.victim()
        value = self.data[key]
        self.delete(key)
        return key, value

    def inserted(self, key):
        h = self.hashes[key] = key_hash(key, self.seed)
        ghost = self._ghost_check(h)
        self.increment(h)
        self.regions[PROBATION if ghost == 1 else WINDOW][key] = None
        self.nwin += 1
        while len(self.regions[WINDOW]) > self.wmax:
            self._move(next(iter(self.regions[WINDOW])), PROBATION)

    def removed(self, key):
        self.regions[self.region_of(key)].pop(key)
        del self.hashes[key]

    def victim(self):
        win, prob, prot = self.regions
        vic = next(iter(prob), None)
        if vic is None:
            vic = next(iter(prot), None)
        if len(win) >= 1 and (len(win) >= self.wmax or len(prob) + len(prot) == 0):
            cand = next(iter(win))
            if vic is not None and self.estimate(self.hashes[cand]) > self.estimate(self.hashes[vic]):
                self._move(cand, PROBATION)
                self._ghost_put(1, self.hashes[vic], self.nmev)
                self.nmev += 1
                return vic
            self._ghost_put(0, self.hashes[cand], self.nwin)
            return cand
        self._ghost_put(1, self.hashes[vic], self.nmev)
        self.nmev += 1
        return vic

    def popitem(self):
        key = self.order()[0]
        value = self.data[key]
        self.delete(key)
        return key, value

    def resize(self, maxsize):
        self._set_cap(int(maxsize))
        self._targets()
        evicted = []
        self.maxsize = maxsize
        while len(self.data) > maxsize:                 # resize evicts through the admission
            evicted.append(self._evict())
        return evicted

    def clear(self):
        self.data.clear()
        self.hashes.clear()
        for r in self.regions:
            r.clear()

    def order(self):
        return list(self.regions[PROBATION]) + list(self.regions[PROTECTED]) + list(self.regions[WINDOW])

    def state(self):
        """The subset of TinyLFUCache._policy_state() the model tracks."""
        return {
            "window": len(self.regions[WINDOW]), "probation": len(self.regions[PROBATION]),
            "protected": len(self.regions[PROTECTED]), "window_target": self.wmax,
            "protected_target": self.protmax, "window_exact": self.wf,
            "sketch_words": len(self.sketch), "sample": self.sample, "sample_count": self.scount,
            "ghost_slots": len(self.ghosts[0]), "ghost_reach": self.gcap,
            "window_insertions": self.nwin, "main_evictions": self.nmev,
        }
