"""The test suite: a package, so tests import their shared helpers as ``tests.<module>``."""
