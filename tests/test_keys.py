"""Key functions: cachetools' tests, plus the same keys computed by cachetools compared."""

import pickle

import pytest

from kvcache import keys

KEYS = [keys.hashkey, keys.methodkey, keys.typedkey, keys.typedmethodkey]


def _plain(key, *args, **kwargs):
    # the method keys take (and drop) a leading self
    if key in (keys.methodkey, keys.typedmethodkey):
        return key(object(), *args, **kwargs)
    return key(*args, **kwargs)


@pytest.mark.parametrize("key", KEYS)
def test_equality_and_hash(key):
    k = lambda *a, **kw: _plain(key, *a, **kw)  # noqa: E731
    assert k() == k()
    assert hash(k()) == hash(k())
    assert k(1, 2, 3) == k(1, 2, 3)
    assert hash(k(1, 2, 3)) == hash(k(1, 2, 3))
    assert k(1, 2, 3, x=0) == k(1, 2, 3, x=0)
    assert hash(k(1, 2, 3, x=0)) == hash(k(1, 2, 3, x=0))
    assert k(1, 2, 3) != k(3, 2, 1)
    assert k(1, 2, 3) != k(1, 2, 3, x=None)
    assert k(1, 2, 3, x=0) != k(1, 2, 3, x=None)
    assert k(1, 2, 3, x=0) != k(1, 2, 3, y=0)
    # keyword order does not matter for cachetools' keys
    assert k(a=1, b=2) == k(b=2, a=1)
    # a positional tuple is not confused with keywords
    assert k(("x", 0)) != k(x=0)
    with pytest.raises(TypeError):
        hash(k({}))


@pytest.mark.parametrize("key", [keys.hashkey, keys.methodkey])
def test_untyped_keys_compare_equal(key):
    assert _plain(key, 1, 2, 3) == _plain(key, 1.0, 2.0, 3.0)
    assert hash(_plain(key, 1, 2, 3)) == hash(_plain(key, 1.0, 2.0, 3.0))


@pytest.mark.parametrize("key", [keys.typedkey, keys.typedmethodkey])
def test_typed_keys_compare_unequal(key):
    assert _plain(key, 1, 2, 3) != _plain(key, 1.0, 2.0, 3.0)
    assert _plain(key, x=1) != _plain(key, x=1.0)
    assert _plain(key, 1, x=1) == _plain(key, 1, x=1)


def test_method_keys_drop_self():
    assert keys.methodkey(object(), 1, x=2) == keys.hashkey(1, x=2)
    assert keys.typedmethodkey(object(), 1, x=2) == keys.typedkey(1, x=2)
    # self is positional-only: a keyword argument named self is an argument
    assert keys.methodkey(None, self=1) == keys.hashkey(self=1)
    with pytest.raises(TypeError):
        keys.methodkey()


def test_addkeys():
    k = keys.hashkey
    assert isinstance(k(), tuple)
    assert isinstance(k(1, 2, 3) + k(4, 5, 6), type(k()))
    assert isinstance(k(1, 2, 3) + (4, 5, 6), type(k()))
    assert isinstance((1, 2, 3) + k(4, 5, 6), type(k()))
    assert k(1) + (2,) == (1, 2)
    assert (0,) + k(1) == (0, 1)


class CountingHash:
    def __init__(self, value):
        self.value = value
        self.hashes = 0

    def __hash__(self):
        self.hashes += 1
        return hash(self.value)

    def __eq__(self, other):
        return isinstance(other, CountingHash) and self.value == other.value


@pytest.mark.parametrize("key", KEYS)
def test_hash_is_computed_once(key):
    arg = CountingHash(1)
    k = _plain(key, arg, x=arg)
    for _ in range(3):
        h = hash(k)
    assert arg.hashes == 2  # once as positional, once as keyword value
    assert h == hash(tuple(k))  # the cached hash is the plain tuple's


@pytest.mark.parametrize("key", KEYS)
def test_equal_to_plain_tuple(key):
    k = _plain(key, 1, "a", x=(2, 3))
    t = tuple(k)
    assert k == t and t == k
    assert hash(k) == hash(t)
    assert {t: 1}[k] == 1


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("proto", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle(key, proto):
    k = _plain(key, 1, "a", x=2.5)
    hash(k)  # the cached hash must not travel: str hashes differ per process
    copy = pickle.loads(pickle.dumps(k, proto))
    assert "_HashedTuple__hashvalue" not in vars(copy)
    assert copy == k
    assert type(copy) is type(k)
    assert hash(copy) == hash(k)


def test_kwmark_survives_pickling():
    # the separator is the class itself, so identity survives a round trip
    k = keys.hashkey(1, x=2)
    copy = pickle.loads(pickle.dumps(k))
    assert copy[1] is k[1]


def test_layout_matches_cachetools():
    cachetools_keys = pytest.importorskip("cachetools.keys")
    # keys without keywords are the plain argument tuple, as in cachetools
    for ours, theirs in [
        (keys.hashkey, cachetools_keys.hashkey),
        (keys.typedkey, cachetools_keys.typedkey),
    ]:
        assert ours(1, "a", 2.0) == theirs(1, "a", 2.0)
        assert hash(ours(1, "a", 2.0)) == hash(theirs(1, "a", 2.0))
        # with keywords the layout is the same except for the separator
        a = ours(1, y=2.0, x="a")
        b = theirs(1, y=2.0, x="a")
        assert [v for v in a if v is not keys._kwmark[0]] == [
            v for v in b if v is not cachetools_keys._kwmark[0]
        ]
        assert len(a) == len(b)
    assert keys.methodkey(None, 1) == cachetools_keys.methodkey(None, 1)
    assert keys.typedmethodkey(None, 1) == cachetools_keys.typedmethodkey(None, 1)
