"""Small pure-Python reference models of each eviction policy, used side by side with the engine.

Each model implements the policy as literally as possible on an OrderedDict, with sizes of 1
or, given a `getsizeof`, cachetools 8's sized algorithm in exact arithmetic (Fractions of the
sizes: what float running sums approximate).  `order()` is the iteration order the engine
documents (eviction order where there is one).
"""
import collections
import itertools
from fractions import Fraction


class CacheModel:
    """Insertion order; assignments to existing keys do not move them (cachetools.Cache)."""

    move_on_update = False
    move_on_hit = False

    def __init__(self, maxsize, getsizeof=None):
        self.maxsize = maxsize
        self.getsizeof = getsizeof
        self.sizes = {}
        self.data = collections.OrderedDict()

    @property
    def currsize(self):
        if self.getsizeof is None:
            return len(self.data)
        return sum(map(Fraction, self.sizes.values()), Fraction(0))

    def __len__(self):
        return len(self.data)

    def __contains__(self, key):
        return key in self.data

    def victim(self):
        return next(iter(self.data))

    def get(self, key):
        """Return (found, value) and record the hit."""
        if key not in self.data:
            return False, None
        self.hit(key)
        return True, self.data[key]

    def hit(self, key):
        if self.move_on_hit:
            self.data.move_to_end(key)

    def set(self, key, value):
        """Assign; return the list of evicted (key, value)."""
        if self.getsizeof is not None:
            return self._set_sized(key, value)
        evicted = []
        if key in self.data:
            self.data[key] = value
            self.updated(key)
            return evicted
        if self.maxsize < 1:
            raise ValueError("value too large")
        while len(self.data) >= self.maxsize:
            evicted.append(self.popitem())
        self.data[key] = value
        self.inserted(key)
        return evicted

    def _set_sized(self, key, value):
        size = self.getsizeof(value)
        if size > self.maxsize:
            raise ValueError("value too large")
        if size < 0:
            raise ValueError("value size must be non-negative")
        evicted = []
        diff = Fraction(size) - Fraction(self.sizes[key]) if key in self.data else Fraction(size)
        while self.currsize + diff > self.maxsize:
            evicted.append(self.popitem())
            if key not in self.data:             # evicted itself: now a new key
                diff = Fraction(size)
        self.sizes[key] = size
        if key in self.data:
            self.data[key] = value
            self.updated(key)
        else:
            self.data[key] = value
            self.inserted(key)
        return evicted

    def updated(self, key):
        if self.move_on_update:
            self.data.move_to_end(key)

    def inserted(self, key):
        pass

    def delete(self, key):
        del self.data[key]
        self.sizes.pop(key, None)
        self.removed(key)

    def removed(self, key):
        pass

    def popitem(self):
        key = self.victim()
        value = self.data[key]
        self.delete(key)
        return key, value

    def resize(self, maxsize):
        self.maxsize = maxsize
        evicted = []
        while self.data and self.currsize > maxsize:
            evicted.append(self.popitem())
        return evicted

    def clear(self):
        for key in list(self.data):
            self.delete(key)

    def order(self):
        return list(self.data)


class FIFOModel(CacheModel):
    move_on_update = True


class LRUModel(CacheModel):
    move_on_update = True
    move_on_hit = True


class LFUModel(CacheModel):
    """Victim: the lowest use count; among equals, the one that reached that count first."""

    def __init__(self, maxsize, getsizeof=None):
        super().__init__(maxsize, getsizeof)
        self.count = {}
        self.stamp = {}
        self.clock = itertools.count()

    def _use(self, key):
        self.count[key] = self.count.get(key, 0) + 1
        self.stamp[key] = next(self.clock)

    def hit(self, key):
        self._use(key)

    def updated(self, key):
        self._use(key)

    def inserted(self, key):
        self._use(key)

    def removed(self, key):
        del self.count[key]
        del self.stamp[key]

    def order(self):
        return sorted(self.data, key=lambda k: (self.count[k], self.stamp[k]))

    def victim(self):
        return self.order()[0]


class RRModel(CacheModel):
    """cachetools' RRCache bookkeeping: a dense key list, removal swaps the last key in."""

    def __init__(self, maxsize, choice=min, getsizeof=None):
        super().__init__(maxsize, getsizeof)
        self.keys = []
        self.choice = choice

    def inserted(self, key):
        self.keys.append(key)

    def removed(self, key):
        i = self.keys.index(key)
        last = self.keys.pop()
        if i < len(self.keys):
            self.keys[i] = last

    def victim(self):
        return self.choice(self.keys)

    def order(self):
        return list(self.keys)


MODELS = {
    "Cache": CacheModel,
    "FIFOCache": FIFOModel,
    "LRUCache": LRUModel,
    "LFUCache": LFUModel,
    "RRCache": RRModel,
}


class Collider:
    """A key whose hash collides with others often; equal by value."""

    __slots__ = ("v",)

    def __init__(self, v):
        self.v = v

    def __hash__(self):
        return self.v % 3

    def __eq__(self, other):
        return isinstance(other, Collider) and other.v == self.v

    def __repr__(self):
        return "Collider(%d)" % self.v
