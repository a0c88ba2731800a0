"""A pure-Python reference model of TinyLFUCache (adaptive W-TinyLFU), decision for decision.

It recomputes everything from first principles: MurmurHash64A of hash(key), the count-min
sketch with its halving, the two ghost tables and the window target, the three LRU regions,
the engine's buffer growth (which sizes the sketch and the ghosts), and the two shadow caches
(miniature simulations) that choose the window ghost's reach.  See kvcache/_tinylfu.pyx for
the algorithm this mirrors.
"""
import collections
import math
import struct

from tests.models import CacheModel

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


def ghost_slots(bufcap, per):
    gs = 16
    while gs * per < bufcap:
        gs <<= 1
    return gs


def ghost_put(table, h, clock):
    table[(h >> 32) & (len(table) - 1)] = ((h >> 32) << 32) | 0x80000000 | (clock & 0x7FFFFFFF)


def ghost_age(table, h, clock):
    """Remove h's ghost from table if there is one; return its age, or -1."""
    i = (h >> 32) & (len(table) - 1)
    v = table[i]
    if v == 0 or (v >> 32) != (h >> 32):
        return -1
    table[i] = 0
    return (clock - v) & 0x7FFFFFFF


SHADOW = 256


def _slru_hit(m, key, r):
    """A hit in region r of m (the cache or a shadow): probation promotes, demoting protected's
    oldest beyond its target; elsewhere the key becomes its region's newest."""
    if r == PROBATION:
        m._move(key, PROTECTED)
        while len(m.regions[PROTECTED]) > m.protmax:
            m._move(next(iter(m.regions[PROTECTED])), PROBATION)
    else:
        m.regions[r].move_to_end(key)


class Shadow:
    """A miniature W-TinyLFU over key hashes, sharing the owner's sketch."""

    def __init__(self, owner, slots, reach_all):
        self.owner = owner
        self.slots = slots
        self.reach_all = reach_all         # the owner's _set_cap starts it (reset)

    def reset(self):
        cap = self.owner.scap
        self.regions = [collections.OrderedDict() for _ in range(3)]
        self.where = {}
        self.gwin = [0] * ghost_slots(self.slots, 2)
        self.gmain = [0] * ghost_slots(self.slots, 8)
        self.nwin = self.nmev = self.hits = 0
        self.score = 0.0
        self.gcap = max(int(0.15 * cap), 1)
        self.reach = cap if self.reach_all else 0
        self.wf = float(cap - int((1.0 - 0.01) * cap))
        self._targets()

    def _move(self, h, r):
        self.regions[self.where[h]].pop(h)
        self.regions[r][h] = None
        self.where[h] = r

    def _targets(self):
        cap = self.owner.scap
        hi = float(cap - 1) if cap - 1 >= 1 else 1.0
        self.wf = min(max(self.wf, 1.0), hi)
        self.wmax = int(self.wf)
        self.protmax = int(0.8 * max(cap - self.wmax, 0))
        while len(self.regions[PROTECTED]) > self.protmax:
            self._move(next(iter(self.regions[PROTECTED])), PROBATION)

    def _ghost_check(self, h):
        nw = float(min(self.nwin, self.gcap))
        nm = float(min(self.nmev, self.gcap))
        age = ghost_age(self.gwin, h, self.nwin)
        if 0 <= age < self.gcap:
            self.wf += max(nm / nw if nw > 0 else 1.0, 1.0)
            self._targets()
            return 1
        if 0 <= age < self.reach:
            return 1
        age = ghost_age(self.gmain, h, self.nmev)
        if 0 <= age < self.gcap:
            self.wf -= max(nw / nm if nm > 0 else 1.0, 1.0)
            self._targets()
            return 2
        return 0

    def _victim(self):
        win, prob, prot = self.regions
        vic = next(iter(prob), None)
        if vic is None:
            vic = next(iter(prot), None)
        est = self.owner.estimate
        if len(win) >= 1 and (len(win) >= self.wmax or len(prob) + len(prot) == 0):
            cand = next(iter(win))
            if vic is not None and est(cand) > est(vic) + 1:
                self._move(cand, PROBATION)
                ghost_put(self.gmain, vic, self.nmev)
                self.nmev += 1
                return vic
            ghost_put(self.gwin, cand, self.nwin)
            return cand
        ghost_put(self.gmain, vic, self.nmev)
        self.nmev += 1
        return vic

    def access(self, h):
        """Look h up; on a miss insert it (evicting first).  Return 1 on a hit."""
        r = self.where.get(h)
        if r is not None:
            _slru_hit(self, h, r)
            return 1
        if len(self.where) >= self.owner.scap:
            v = self._victim()
            self.regions[self.where.pop(v)].pop(v)
        r = PROBATION if self._ghost_check(h) == 1 else WINDOW
        self.regions[r][h] = None
        self.where[h] = r
        self.nwin += 1
        while len(self.regions[WINDOW]) > self.wmax:
            self._move(next(iter(self.regions[WINDOW])), PROBATION)
        return 0


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
        # window rejects, main evictions
        self.ghosts = [[0] * ghost_slots(self.bufcap, 2), [0] * ghost_slots(self.bufcap, 8)]
        self.scount = 0
        self.pending = {}              # key -> hits not yet in the sketch (at most 15)
        self.nwin = self.nmev = 0
        self.wf = float(self.cap - int((1.0 - 0.01) * self.cap))
        self.scur = 0
        slots = max(min(self.cap, SHADOW), 1)
        self.shadows = [Shadow(self, slots, True), Shadow(self, slots, False)]
        self._set_cap(self.cap)
        self._targets()
        self._size_sample()

    # -- sizing --------------------------------------------------------------------------------

    def _size_sample(self):
        self.sample = 20 * max(self.bufcap, 32)

    def _set_cap(self, cap):
        self.cap = cap
        self.gcap = min(max(int(0.15 * cap), 1), 1 << 30)
        slots = self.shadows[0].slots
        if cap < 1:
            self.scap, self.sthr = 0, 0
        elif cap <= slots:
            self.scap, self.sthr = cap, 1 << 24
        else:
            self.scap, self.sthr = slots, (slots << 24) // cap
        self.sticks = 0
        for sh in self.shadows:
            sh.reset()
        self._set_reach()

    def _set_reach(self):
        self.reach = min(self.cap, 1 << 30) if self.scur == 0 else 0

    def _shadows(self, h):
        if ((h >> 8) & 0xFFFFFF) >= self.sthr:
            return
        for sh in self.shadows:
            sh.hits += sh.access(h)
        self.sticks += 1
        if self.sticks < max(self.scap, 16):
            return
        self.sticks = 0
        for sh in self.shadows:
            sh.score = sh.score * 0.9 + sh.hits
            sh.hits = 0
        a, b = self.shadows[1 - self.scur], self.shadows[self.scur]
        if a.score > b.score + 0.5 and a.score - b.score > math.sqrt(a.score + b.score + 1.0):
            self.scur = 1 - self.scur
            self._set_reach()

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
            fresh = [0] * ghost_slots(new, 2 if i == 0 else 8)
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

    def _add(self, h, k):
        for w, off in self._cells(h):
            v = (self.sketch[w] >> off) & 15
            self.sketch[w] += (min(v + k, 15) - v) << off

    def _tick(self):
        self.scount += 1
        if self.scount >= self.sample:
            for key in list(self.pending):
                self.settle(key)
            self.sketch = [(v >> 1) & 0x7777777777777777 for v in self.sketch]
            self.scount //= 2

    def increment(self, h):
        self._add(h, 1)
        self._tick()

    def settle(self, key):
        """Add key's pending hits to the sketch (a hit only counts in the entry until then)."""
        k = self.pending.pop(key, 0)
        if k:
            self._add(self.hashes[key], k)

    def frequency(self, key):
        """What TinyLFUCache._frequency reports: the estimate, key's pending hits included."""
        return min(15, self.estimate(self.hashes[key]) + self.pending.get(key, 0))

    # -- ghosts --------------------------------------------------------------------------------

    def _ghost_put(self, which, h, clock):
        ghost_put(self.ghosts[which], h, clock)

    def _ghost_check(self, h):
        nw = float(min(self.nwin, self.gcap))
        nm = float(min(self.nmev, self.gcap))
        age = ghost_age(self.ghosts[0], h, self.nwin)
        if 0 <= age < self.gcap:
            d = nm / nw if nw > 0 else 1.0
            self.wf += max(d, 1.0)
            self._targets()
            return 1
        if 0 <= age < self.reach:
            return 1
        age = ghost_age(self.ghosts[1], h, self.nmev)
        if 0 <= age < self.gcap:
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
        self._shadows(self.hashes[key])
        self.pending[key] = min(self.pending.get(key, 0) + 1, 15)
        self._tick()
        _slru_hit(self, key, self.region_of(key))

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
        self._shadows(h)
        self.increment(h)
        self.regions[PROBATION if ghost == 1 else WINDOW][key] = None
        self.nwin += 1
        while len(self.regions[WINDOW]) > self.wmax:
            self._move(next(iter(self.regions[WINDOW])), PROBATION)

    def removed(self, key):
        self.settle(key)
        self.regions[self.region_of(key)].pop(key)
        del self.hashes[key]

    def victim(self):
        win, prob, prot = self.regions
        vic = next(iter(prob), None)
        if vic is None:
            vic = next(iter(prot), None)
        if len(win) >= 1 and (len(win) >= self.wmax or len(prob) + len(prot) == 0):
            cand = next(iter(win))
            self.settle(cand)
            if vic is not None:
                self.settle(vic)
            if vic is not None and self.estimate(self.hashes[cand]) > self.estimate(self.hashes[vic]) + 1:
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
        for key in list(self.pending):
            self.settle(key)
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
            "ghost_slots": len(self.ghosts[1]), "ghost_reach": self.gcap,
            "window_insertions": self.nwin, "main_evictions": self.nmev,
            "window_ghost_slots": len(self.ghosts[0]), "long_reach": self.reach,
            "shadow_choice": self.scur,
            "shadow_entries": tuple(len(sh.where) for sh in self.shadows),
            "shadow_scores": tuple(sh.score for sh in self.shadows),
            "shadow_windows": tuple(sh.wf for sh in self.shadows), "shadow_sample": self.sthr,
        }
