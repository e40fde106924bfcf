"""Coherence across processes (issue 13): what an invalidation costs and what it reaches.

On a private ``redis-server`` (behind a loopback proxy, to hang the path to it):

1. ``invalidate()`` on a healthy Redis, interleaved with the peer every other library does (a
   plain ``DEL`` through redis-py), medians and the ratio;
2. ``invalidate()`` while the path to Redis is hung: the first call (the breaker still closed:
   one socket timeout) and the following ones (breaker open: nothing sent), and the time from
   Redis answering again to the kept invalidation being delivered by the background replay;
3. rebuilds racing an invalidation: a rebuild that took its lease, then an invalidation, then
   the rebuild's publish — how many stale values end up stored, with the fence vs a plain DEL.

4. the backplane: an invalidation's propagation to 4 other processes' memory layers (from
   just before ``invalidate()`` to the key being dropped there, one clock: same host), p50 and
   p99; and a memory-layer hit with the backplane on vs off (interleaved rounds, the ratio);
5. the channel down: 4 other processes whose channel never comes up (their Redis user may not
   subscribe: an ACL without channels) while their reads work, each reading every key in a loop;
   invalidations spread over twice ``l1_max_age``; how long after an invalidation a process
   still served the old value (from just before ``invalidate()`` to the return of the last read
   that gave the old value), against the goal ``l1_max_age`` + one shared-layer read;
6. tags: ``invalidate_tags`` of one tag carried by N entries (10,000; their memory layer and
   Redis), its time and the Redis writes it makes (``rdb_changes_since_last_save``), against
   deleting the N keys (pipelined ``DEL``s, 1,000 a batch) and against N ``invalidate()``
   calls, in interleaved rounds (medians); then a sample of the keys is read back (none may
   be servable);
7. backend calls after ``invalidate_tags`` of 10,000 cached keys under an open-loop load of
   200 requests per second over those keys: ``guard`` with a token bucket (rate 50/s, burst
   50) against ``cached`` without one; the bucket's bound ``burst + rate * T`` and the most
   backend calls in any one-second window.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import timeit
import uuid
from typing import Any

from benchmarks._harness import median, print_table, smoke, summary

__all__ = ["run"]


def _servers() -> tuple[Any, Any]:
    from tests.servers import RedisServer, TcpProxy

    # CACHEWARD_BENCH_PORT: a fixed port (e.g. inside a range agreed with other jobs).
    port = os.environ.get("CACHEWARD_BENCH_PORT")
    server = RedisServer(port=int(port) if port else None)
    server.start()
    proxy = TcpProxy(server.port)
    proxy.__enter__()
    return server, proxy


def _stack(url: str, space: str, timeout: float) -> tuple[Any, Any]:
    import cacheward as cw

    layer = cw.RedisLayer.from_url(url, socket_timeout=timeout, namespace=space, breaker_reset=0.2)

    @cw.cached(ttl=60, layers=[cw.MemoryLayer(maxsize=1000), layer], namespace="bench")
    def load(key: str) -> str:
        return key

    return load, layer


def _healthy(server: Any, rounds: int, per_round: int) -> dict[str, Any]:
    load, layer = _stack(server.url, f"b{uuid.uuid4().hex[:8]}", 1.0)
    raw = server.client()
    ours: list[float] = []
    peer: list[float] = []
    for _ in range(rounds):  # interleaved: one block of each per round
        started = time.perf_counter()
        for index in range(per_round):
            load.invalidate(f"k{index}")
        ours.append((time.perf_counter() - started) / per_round)
        started = time.perf_counter()
        for index in range(per_round):
            raw.delete(f"bench:k{index}")
        peer.append((time.perf_counter() - started) / per_round)
    layer.close()
    raw.close()
    return {
        "cacheward_invalidate_s": median(ours),
        "plain_del_s": median(peer),
        "ratio": median(ours) / median(peer),
    }


def _hung(server: Any, proxy: Any, calls: int) -> dict[str, Any]:
    load, layer = _stack(proxy.url, f"h{uuid.uuid4().hex[:8]}", 0.2)
    assert load("c1") == "c1"
    proxy.blackhole()
    latencies: list[float] = []
    pending = 0
    for _ in range(calls):
        started = time.perf_counter()
        result = load.invalidate("c1")
        latencies.append(time.perf_counter() - started)
        pending += not result
    proxy.heal()
    healed = time.perf_counter()
    deadline = healed + 30.0
    while load.stats().invalidations_pending and time.perf_counter() < deadline:
        time.sleep(0.001)
    delivered = time.perf_counter() - healed
    stats = load.stats()
    layer.close()
    return {
        "first_invalidate_s": latencies[0],
        "later_invalidate_s": summary(latencies[1:]),
        "reported_pending": pending,
        "calls": calls,
        "replay_after_heal_s": delivered,
        "replayed": stats.invalidations_replayed,
        "still_pending": stats.invalidations_pending,
    }


def _races(server: Any, races: int) -> dict[str, int]:
    import cacheward as cw

    stale = {"fence": 0, "plain_del": 0}
    layer = cw.RedisLayer.from_url(server.url, socket_timeout=1.0, namespace="race")
    for index in range(races):
        for how in stale:
            key = cw.CacheKey(index, f"{how}:v1", (index,), {}, ("k",))
            token = layer.lease(key, ttl=30).token
            assert token is not None
            if how == "fence":
                layer.fence(key)
            else:
                layer.delete(key)
            now = time.time()
            layer.publish(key, cw.Entry("old", now, now + 60, now + 60), token, lease_ttl=30)
            stale[how] += layer.get(key) is not None
    layer.close()
    return stale


def _workers(raw: Any, args: list[str], count: int, space: str) -> list[Any]:
    """``count`` processes of ``benchmarks._backplane_worker args``, once each says it is ready."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks._backplane_worker", *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    deadline = time.monotonic() + 60
    for proc in procs:
        while raw.get(f"ready:{space}:{proc.pid}") is None and time.monotonic() < deadline:
            time.sleep(0.01)
    return procs


def _propagation(server: Any, keys: int, listeners: int = 4) -> dict[str, Any]:
    import cacheward as cw

    space = f"p{uuid.uuid4().hex[:8]}"
    raw = server.client()
    procs = _workers(raw, [server.url, space, str(keys)], listeners, space)
    layer = cw.RedisLayer.from_url(server.url, socket_timeout=1.0, namespace=space)

    @cw.cached(ttl=600, layers=[cw.MemoryLayer(maxsize=keys + 10), layer], namespace="bench")
    def load(key: str) -> str:
        return key

    sent: dict[str, float] = {}
    for index in range(keys):
        sent[f"k{index}"] = time.time()
        load.invalidate(f"k{index}")
        time.sleep(0.002)
    delays: list[float] = []
    missing = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        drops = json.loads(out or "{}")
        missing += keys - len(drops)
        delays += [drops[k] - sent[k] for k in drops]
    layer.close()
    raw.close()
    return {"listeners": listeners, "keys": keys, "not_dropped": missing, **summary(delays)}


def _changes(raw: Any) -> int:
    """The server's write counter (every key changed since the last save)."""
    return int(raw.info("persistence")["rdb_changes_since_last_save"])


def _tag_bulk(server: Any, entries: int, rounds: int) -> dict[str, Any]:
    """``invalidate_tags`` of one tag on ``entries`` entries vs deleting them key by key."""
    import cacheward as cw

    space = f"t{uuid.uuid4().hex[:8]}"
    layer = cw.RedisLayer.from_url(server.url, socket_timeout=2.0, namespace=space)
    raw = server.client()

    @cw.cached(
        ttl=600, layers=[cw.MemoryLayer(maxsize=entries + 10), layer], namespace="bulk",
        tags=["bulk"],
    )  # fmt: skip
    def load(key: int) -> int:
        return key

    def fill() -> list[bytes]:
        for key in range(entries):
            load.set(key, key)
        found = raw.scan_iter(match=f"cacheward:{space}:v1:{{*", count=1000)
        return [key for key in found if key.endswith(b"}")]  # the entries, not fence keys

    def servable() -> int:
        """Of 200 keys, how many Redis would still serve (read as the function reads them)."""
        sample = range(0, entries, max(1, entries // 200))
        found = (
            layer.get(cw.CacheKey(k, "bulk:v1", (k,), {}, ("key",), ("bulk",))) for k in sample
        )
        return sum(entry is not None for entry in found)

    ways: dict[str, dict[str, list[float]]] = {
        way: {"s": [], "writes": [], "servable": []}
        for way in ("invalidate_tags", "pipelined_del", "invalidate_each")
    }
    for index in range(rounds):  # interleaved, rotating which goes first
        order = list(ways)
        order = order[index % 3 :] + order[: index % 3]
        for way in order:
            keys = fill()
            before = _changes(raw)
            started = time.perf_counter()
            if way == "invalidate_tags":
                assert cw.invalidate_tags("bulk", layers=[layer]).done
            elif way == "pipelined_del":
                pipe = raw.pipeline(transaction=False)
                for start in range(0, len(keys), 1000):
                    pipe.delete(*keys[start : start + 1000])
                pipe.execute()  # (and this process's memory layer still holds them)
            else:
                for key in range(entries):
                    load.invalidate(key)
            elapsed = time.perf_counter() - started
            writes = _changes(raw) - before
            ways[way]["s"].append(elapsed)
            ways[way]["writes"].append(writes)
            ways[way]["servable"].append(servable())
    stats = layer.stats()
    layer.close()
    raw.close()
    return {
        "entries": entries,
        "rounds": rounds,
        **{
            way: {
                "median_s": median(got["s"]),
                "writes": median(got["writes"]),
                "servable_after": max(got["servable"]),
                "raw_s": got["s"],
            }
            for way, got in ways.items()
        },
        "tag_fences": stats.tag_fences,
    }


SPREAD = 7919  # a prime: consecutive requests ask for keys far apart


def _tag_load(server: Any, entries: int, duration: float, at: float) -> dict[str, Any]:
    """Backend calls after ``invalidate_tags`` of ``entries`` keys under 200 requests/s."""
    results: dict[str, Any] = {
        name: _tag_load_one(server, limited, entries, duration, at)
        for name, limited in (("guard", True), ("cached", False))
    }
    results.update(entries=entries, load_rate=LOAD_RATE, duration=duration, invalidated_at=at)
    return results


LOAD_RATE, RATE, BURST = 200, 50.0, 50


def _tag_load_one(
    server: Any, limited: bool, entries: int, duration: float, at: float
) -> dict[str, Any]:
    import cacheward as cw
    from benchmarks._load import thread_load

    layer = cw.RedisLayer.from_url(
        server.url, socket_timeout=2.0, namespace=f"l{uuid.uuid4().hex[:8]}"
    )
    calls: list[float] = []

    def backend(key: int) -> int:
        calls.append(time.perf_counter())
        time.sleep(0.002)
        return key

    settings: dict[str, Any] = {
        "ttl": 600,
        "layers": [cw.MemoryLayer(maxsize=entries + 10), layer],
        "namespace": "loaded",
        "tags": ["bulk"],
    }
    fn: Any
    if limited:
        fn = cw.guard(limiter=cw.TokenBucket(rate=RATE, burst=BURST), **settings)(backend)
    else:
        fn = cw.cached(**settings)(backend)
    for key in range(entries):
        fn.set(key, key)

    def expected(i: int) -> int:
        return (i * SPREAD) % entries

    timer = threading.Timer(at, lambda: cw.invalidate_tags("bulk", layers=[layer]))
    started = time.perf_counter()
    timer.start()
    outcomes = thread_load(lambda i: fn(expected(i)), LOAD_RATE, duration, keys=10**9,
                           expected=expected)  # fmt: skip
    timer.join()
    layer.close()
    invalidated = started + at
    after = sorted(t - invalidated for t in calls if t >= invalidated)
    window = max((sum(1 for u in after if t <= u < t + 1.0) for t in after), default=0)
    # T: from the invalidation to the last backend call (callers still waiting for a token,
    # up to max_wait, fetch after the load stops).
    span = after[-1] if after else 0.0
    return {
        "backend_calls_before": sum(1 for t in calls if t < invalidated),
        "backend_calls_after": len(after),
        "span_s": span,
        "bound": BURST + RATE * span if limited else None,
        "max_calls_in_1s": window,
        "bound_1s": BURST + RATE if limited else None,
        "requests": len(outcomes),
        "right_answers": sum(ok for _, ok in outcomes),
        "p99_latency_s": summary([lat for lat, _ in outcomes]).get("p99"),
    }


def _channel_down(server: Any, keys: int, max_age: float, listeners: int = 4) -> dict[str, Any]:
    import cacheward as cw

    space = f"d{uuid.uuid4().hex[:8]}"
    raw = server.client()
    user = f"nochan{uuid.uuid4().hex[:6]}"
    # Every command and key, no channel: SUBSCRIBE is refused, so the channel stays down.
    raw.execute_command("ACL", "SETUSER", user, "on", "nopass", "+@all", "~*", "resetchannels")
    for index in range(keys):
        raw.set(f"val:{space}:k{index}", "old")
    host, port = server.url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    down_url = f"redis://{user}@{host}:{port}/0"
    args = [down_url, space, str(keys), "--down", str(max_age)]
    procs = _workers(raw, args, listeners, space)
    layer = cw.RedisLayer.from_url(server.url, socket_timeout=1.0, namespace=space)

    @cw.cached(ttl=600, layers=[cw.MemoryLayer(maxsize=keys + 10), layer], namespace="bench")
    def load(key: str) -> str:
        return (raw.get(f"val:{space}:{key}") or b"").decode()

    sent: dict[str, float] = {}
    gap = 2 * max_age / keys  # the invalidations meet entries of every age up to 2·l1_max_age
    for index in range(keys):
        key = f"k{index}"
        sent[key] = time.time()
        raw.set(f"val:{space}:{key}", "new")
        load.invalidate(key)
        time.sleep(gap)
    ages: list[float] = []
    never = rechecks = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        report = json.loads(out or "{}")
        seen = report.get("seen", {})
        never += keys - len(seen)
        rechecks += report.get("rechecks", 0)
        # The age of the old value when last served after the invalidation (0: never after it).
        old_until = report.get("old_until", {})
        ages += [max(0.0, old_until.get(k, 0.0) - sent[k]) for k in seen]
    # One shared-layer read, for the goal: a GET's median on this Redis.
    reads = []
    for _ in range(200):
        started = time.perf_counter()
        raw.get(f"val:{space}:k0")
        reads.append(time.perf_counter() - started)
    layer.close()
    raw.execute_command("ACL", "DELUSER", user)
    raw.close()
    return {
        "listeners": listeners,
        "keys": keys,
        "l1_max_age_s": max_age,
        "one_read_s": median(reads),
        "never_new": never,
        "rechecks": rechecks,
        **summary(ages),
    }


def _hit_cost(server: Any, rounds: int, calls: int) -> dict[str, Any]:
    import cacheward as cw

    layer = cw.RedisLayer.from_url(server.url, socket_timeout=1.0, namespace="hits")
    made = {}
    for on in (True, False):

        @cw.cached(
            ttl=600,
            layers=[cw.MemoryLayer(maxsize=100), layer],
            namespace=f"hits-{on}",
            backplane=on,
        )
        def load(key: str) -> str:
            return key

        load("k")
        made[on] = load
    deadline = time.monotonic() + 10
    while not layer.subscriber().up and time.monotonic() < deadline:
        time.sleep(0.01)
    on_s: list[float] = []
    off_s: list[float] = []
    for index in range(rounds):  # interleaved, alternating which goes first
        for on in (True, False) if index % 2 else (False, True):
            fn = made[on]
            (on_s if on else off_s).append(
                timeit.timeit(lambda fn=fn: fn("k"), number=calls) / calls
            )
    layer.close()
    on_median, off_median = median(on_s), median(off_s)
    return {"on_s": on_median, "off_s": off_median, "ratio": on_median / off_median}


def run(*, quick: bool) -> dict[str, object]:
    tiny = smoke()
    rounds, per_round = (2, 20) if tiny else (5, 200) if quick else (15, 500)
    hung_calls = 3 if tiny else 20
    races = 5 if tiny else 100 if quick else 1000
    server, proxy = _servers()
    try:
        healthy = _healthy(server, rounds, per_round)
        hung = _hung(server, proxy, hung_calls)
        stale = _races(server, races)
        propagation = _propagation(server, 5 if tiny else 100 if quick else 300)
        hits = _hit_cost(server, 3 if tiny else 9 if quick else 21, 2000 if tiny else 100_000)
        down = _channel_down(server, 5 if tiny else 50 if quick else 200, 0.5 if tiny else 1.0)
        bulk = _tag_bulk(server, 200 if tiny else 10_000, 1 if tiny else 3 if quick else 5)
        loaded = _tag_load(
            server, 200 if tiny else 10_000, 2.0 if tiny else 6.0 if quick else 12.0, 1.0
        )
    finally:
        proxy.stop()
        server.stop()
        server.cleanup()
    print_table(
        "invalidate(), healthy Redis (medians of interleaved rounds)",
        ["cacheward invalidate()", "plain DEL (redis-py)", "ratio"],
        [
            [
                f"{healthy['cacheward_invalidate_s'] * 1e6:.0f} µs",
                f"{healthy['plain_del_s'] * 1e6:.0f} µs",
                f"{healthy['ratio']:.2f}x",
            ]
        ],
    )
    later = hung["later_invalidate_s"]
    print_table(
        "invalidate() while the path to Redis is hung (socket_timeout 0.2 s)",
        ["first call", "later calls p50", "reported pending", "delivered after heal"],
        [
            [
                f"{hung['first_invalidate_s'] * 1e3:.0f} ms",
                f"{later.get('p50', float('nan')) * 1e6:.0f} µs",
                f"{hung['reported_pending']} of {hung['calls']}",
                f"{hung['replay_after_heal_s'] * 1e3:.0f} ms",
            ]
        ],
    )
    print_table(
        f"rebuilds racing an invalidation ({races} races each)",
        ["stale values stored, fence", "stale values stored, plain DEL"],
        [[stale["fence"], stale["plain_del"]]],
    )
    print_table(
        f"backplane: invalidate() to dropped from {propagation['listeners']} other processes' "
        f"memory layers ({propagation['keys']} keys)",
        ["p50", "p99", "max", "not dropped"],
        [
            [
                f"{propagation.get('p50', float('nan')) * 1e3:.2f} ms",
                f"{propagation.get('p99', float('nan')) * 1e3:.2f} ms",
                f"{propagation.get('max', float('nan')) * 1e3:.2f} ms",
                propagation["not_dropped"],
            ]
        ],
    )
    print_table(
        "memory-layer hit, backplane on vs off (medians of interleaved rounds)",
        ["on", "off", "ratio"],
        [[f"{hits['on_s'] * 1e9:.0f} ns", f"{hits['off_s'] * 1e9:.0f} ns", f"{hits['ratio']:.3f}"]],
    )
    print_table(
        f"invalidate_tags of one tag on {bulk['entries']} entries vs deleting them "
        f"(medians of {bulk['rounds']} interleaved rounds)",
        ["way", "time", "Redis writes", "servable after (of 200)"],
        [
            [way, f"{bulk[way]['median_s'] * 1e3:.1f} ms", f"{bulk[way]['writes']:.0f}",
             bulk[way]["servable_after"]]
            for way in ("invalidate_tags", "pipelined_del", "invalidate_each")
        ],
    )  # fmt: skip
    print_table(
        f"backend calls after invalidate_tags of {loaded['entries']} keys under "
        f"{loaded['load_rate']} req/s "
        f"({loaded['duration'] - loaded['invalidated_at']:.0f} s after)",
        ["stack", "before", "after", "bound b+r*T", "max in 1 s", "bound b+r", "right answers"],
        [
            [name, loaded[name]["backend_calls_before"], loaded[name]["backend_calls_after"],
             f"{loaded[name]['bound']:.0f}" if loaded[name]["bound"] else "-",
             loaded[name]["max_calls_in_1s"],
             f"{loaded[name]['bound_1s']:.0f}" if loaded[name]["bound_1s"] else "-",
             f"{loaded[name]['right_answers']} of {loaded[name]['requests']}"]
            for name in ("guard", "cached")
        ],
    )  # fmt: skip
    print_table(
        f"channel down: oldest value served by {down['listeners']} other processes after an "
        f"invalidation ({down['keys']} keys, l1_max_age {down['l1_max_age_s']:g} s)",
        [
            "p50",
            "p99",
            "max",
            "goal: l1_max_age + one read",
            "never new",
            "rechecks",
        ],
        [
            [
                f"{down.get('p50', float('nan')) * 1e3:.0f} ms",
                f"{down.get('p99', float('nan')) * 1e3:.0f} ms",
                f"{down.get('max', float('nan')) * 1e3:.1f} ms",
                f"{(down['l1_max_age_s'] + down['one_read_s']) * 1e3:.1f} ms",
                down["never_new"],
                down["rechecks"],
            ]
        ],
    )
    return {
        "tags_bulk": bulk,
        "tags_under_load": loaded,
        "healthy": healthy,
        "hung": hung,
        "races": races,
        "stale_stored": stale,
        "propagation": propagation,
        "hit_cost": hits,
        "channel_down": down,
    }
