"""Reads from replicas: how a Redis Cluster's read load spreads, and what a read costs.

Run: PYTHONPATH=$PWD python bench/redis_replicas.py [--keys 20000] [--rounds 7]

A cluster of 3 primaries with one replica each (redis-server started here, loopback). One
TieredCache writes the keys; then three reader tiers, one per way the cluster client balances
reads, read them with a cold local tier, in interleaved rounds: ``primaries`` (a plain client),
``read_from_replicas=True`` (redis-py's round-robin over each slot's primary and replicas) and
``ROUND_ROBIN_REPLICAS`` (the replicas only). Printed per reader: the script calls each node
served (``INFO commandstats``), and the best and median µs per remote ``get`` and ms per
``get_many`` of 1,000 keys.
"""

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kvcache  # noqa: E402
from bench_redis import MISSING_REDIS, REDIS_SERVER, RedisServer  # noqa: E402
from kvcache.redis import TieredCache  # noqa: E402

REDIS_CLI = shutil.which("redis-cli")


def cluster_port():
    """Return a free loopback port whose cluster bus port (+10000) is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port > 55535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue


def start_cluster(directory, masters=3):
    """Start `masters` primaries with one replica each; return the servers once every node knows them."""
    nodes = [RedisServer(os.path.join(directory, f"n{i}"),
                         ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
             for i in range(2 * masters)]
    try:
        for n in nodes:
            os.makedirs(n.directory)
            n.port = cluster_port()
            n.start()
        return _form_cluster(nodes)
    except BaseException:
        for n in nodes:
            n.stop()
        raise


def _form_cluster(nodes):
    """Assign the slots and replicas with redis-cli; wait until every node lists a replica per range."""
    import redis

    subprocess.run([REDIS_CLI, "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in nodes],
                    "--cluster-replicas", "1", "--cluster-yes"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready = 0
        for n in nodes:
            with redis.Redis(port=n.port) as r:
                if r.info("replication")["role"] == "master":
                    r.flushall()  # a replica whose offset is still 0 is not listed
                slots = r.execute_command("CLUSTER SLOTS")
                state = r.cluster("info").get("cluster_state")
                ready += state == "ok" and bool(slots) and all(len(rng) >= 4 for rng in slots)
        if ready == len(nodes):
            return nodes
        time.sleep(0.1)
    raise RuntimeError("the cluster did not come up")


def script_calls(node):
    stats = node.client().info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha_ro", "eval_ro", "evalsha", "eval"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--gets", type=int, default=2000, help="remote gets per round and reader")
    args = ap.parse_args()
    if REDIS_SERVER is None or REDIS_CLI is None:
        sys.exit(MISSING_REDIS)
    from redis.backoff import NoBackoff
    from redis.cluster import LoadBalancingStrategy, RedisCluster
    from redis.retry import Retry

    with tempfile.TemporaryDirectory(prefix="kvcache-replicas-") as d:
        nodes = start_cluster(d)
        try:
            def client(**kw):
                return RedisCluster(host="127.0.0.1", port=nodes[0].port, socket_timeout=1.0,
                                    socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0), **kw)

            ns = "bench-replicas"
            keys = [f"k{i}" for i in range(args.keys)]
            writer = TieredCache(kvcache.LRUCache(maxsize=10), client(), ns)
            writer.set_many(keys, [{"id": i, "name": f"user{i}"} for i in range(args.keys)])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                readers = {
                    "primaries": client(),
                    "read_from_replicas=True": client(read_from_replicas=True),
                    "ROUND_ROBIN_REPLICAS": client(load_balancing_strategy=LoadBalancingStrategy.ROUND_ROBIN_REPLICAS),
                }
            tiers = {name: TieredCache(kvcache.LRUCache(maxsize=args.keys), c, ns) for name, c in readers.items()}
            deadline = time.monotonic() + 10
            while not all(all(t._listeners_up) for t in tiers.values()) and time.monotonic() < deadline:
                time.sleep(0.01)
            roles = {n.port: n.client().info("replication")["role"] for n in nodes}
            calls = {name: dict.fromkeys(roles, 0) for name in tiers}
            get_us = {name: [] for name in tiers}
            many_ms = {name: [] for name in tiers}
            rng = random.Random(1)
            for _ in range(args.rounds):
                order = list(tiers)
                rng.shuffle(order)
                for name in order:
                    t = tiers[name]
                    batch = rng.sample(keys, 1000)
                    picks = rng.sample(keys, args.gets)
                    before = {n.port: script_calls(n) for n in nodes}
                    t.local.clear()
                    t0 = time.perf_counter()
                    for k in picks:
                        t.get(k)
                    get_us[name].append((time.perf_counter() - t0) / len(picks) * 1e6)
                    t.local.clear()
                    t0 = time.perf_counter()
                    got = t.get_many(batch)
                    many_ms[name].append((time.perf_counter() - t0) * 1e3)
                    assert None not in got
                    for n in nodes:
                        calls[name][n.port] += script_calls(n) - before[n.port]
            ports = sorted(roles, key=lambda p: (roles[p] != "master", p))
            print(f"{args.rounds} rounds; per round and reader: {args.gets} remote gets, one get_many of 1,000 keys")
            print("script calls served per node (" + ", ".join(f"{roles[p]}:{p}" for p in ports) + ")")
            for name in tiers:
                total = sum(calls[name].values())
                shares = " ".join(f"{calls[name][p]:>7} ({calls[name][p] / total:4.0%})" for p in ports)
                print(f"  {name:<24} {shares}")
            print("cost (best / median over rounds)")
            for name in tiers:
                print(f"  {name:<24} get {min(get_us[name]):6.1f} / {statistics.median(get_us[name]):6.1f} µs"
                      f"   get_many(1,000) {min(many_ms[name]):6.2f} / {statistics.median(many_ms[name]):6.2f} ms"
                      f"   errors {tiers[name].stats().errors}")
            for t in [writer, *tiers.values()]:
                t.close()
        finally:
            for n in nodes:
                n.stop()


if __name__ == "__main__":
    main()
