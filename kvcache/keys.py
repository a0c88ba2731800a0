"""Key functions for memoizing decorators (cachetools-compatible)."""

__all__ = ("hashkey", "methodkey", "typedkey", "typedmethodkey")


class _HashedTuple(tuple):
    """A tuple that hashes its items at most once.

    A decorator hashes its key at least twice on a miss (lookup, then
    store), and arguments may hash slowly, so the hash is kept.  It is
    equal to, and hashes like, the plain tuple with the same items.
    """

    __hashvalue = None

    def __hash__(self, hash=tuple.__hash__):
        hashvalue = self.__hashvalue
        if hashvalue is None:
            self.__hashvalue = hashvalue = hash(self)
        return hashvalue

    def __add__(self, other, add=tuple.__add__):
        return _HashedTuple(add(self, other))

    def __radd__(self, other, add=tuple.__add__):
        return _HashedTuple(add(other, self))

    def __getstate__(self):
        # str hashes are salted per process: a pickled hash would be wrong
        # in the process that loads it.
        return {}


# Separates positional from keyword arguments.  The class (not an object
# instance) keeps its identity through pickling.
_kwmark = (_HashedTuple,)


def hashkey(*args, **kwargs):
    """Return a cache key for the specified hashable arguments."""
    if kwargs:
        return _HashedTuple(args + _kwmark + tuple(sorted(kwargs.items())))
    return _HashedTuple(args)


def methodkey(self, /, *args, **kwargs):
    """Return a cache key for use with cached methods; `self` is left out."""
    if kwargs:
        return _HashedTuple(args + _kwmark + tuple(sorted(kwargs.items())))
    return _HashedTuple(args)


def typedkey(*args, **kwargs):
    """Return a typed cache key for the specified hashable arguments.

    Arguments that compare equal but differ in type (`1` and `1.0`) give
    different keys.
    """
    if kwargs:
        sorted_kwargs = tuple(sorted(kwargs.items()))
        key = args + _kwmark + sorted_kwargs
        key += tuple([type(v) for _, v in sorted_kwargs])
    else:
        key = args
    return _HashedTuple(key + tuple(map(type, args)))


def typedmethodkey(self, /, *args, **kwargs):
    """Return a typed cache key for use with cached methods; `self` is left out."""
    if kwargs:
        sorted_kwargs = tuple(sorted(kwargs.items()))
        key = args + _kwmark + sorted_kwargs
        key += tuple([type(v) for _, v in sorted_kwargs])
    else:
        key = args
    return _HashedTuple(key + tuple(map(type, args)))
