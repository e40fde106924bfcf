"""A Django view under the incident's fault: cacheward's cache backend vs django-redis.

``python -m benchmarks django [--quick] [--json PATH]``

One Django process, one view that does what Django projects do —
``cache.get_or_set(f"config:{customer}", load_from_database, timeout=300)`` — and three cache
backends behind it, measured in the same run, in alternating order:

* **cacheward**: ``cacheward.contrib.django.RedisCache`` with its defaults (0.1 s timeouts);
* **django-redis (IGNORE_EXCEPTIONS)**: django-redis's documented settings for a cache that must
  not take the site down with it (``IGNORE_EXCEPTIONS: True``, 5 s socket timeouts);
* **django-redis (defaults)**: django-redis as installed (no ``IGNORE_EXCEPTIONS``).

Each round: request threads ask for 20 customers' configurations (the database read takes
2 ms, on SQLite through Django's ORM connection); **warm** (Redis up, every key cached), then the
incident's fault — **Redis killed and every in-process cache flushed** — for the **outage**
phase, then **back**: Redis restarted empty. Counted per phase and backend: requests, database
queries, caller errors (a 500 from the view) and the callers' p50 / p99 / max latency. The
``breaker_opened`` warnings printed during the outage are cacheward's own logs of the scenario.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
import uuid
from typing import Any

from benchmarks import _harness as h
from benchmarks._redisproc import KEY_PREFIX, L2, LAYER_PREFIX

KEYS = 20
DB_SECONDS = 0.002
CONTENDERS = ("cacheward", "django-redis (IGNORE_EXCEPTIONS)", "django-redis (defaults)")
PHASES = ("warm", "outage", "back")

#: Database reads made by the view, per contender (reset per phase).
_QUERIES: dict[str, int] = {}
_QUERIES_LOCK = threading.Lock()


def _settings(quick: bool) -> dict[str, Any]:
    if h.smoke():
        return {"rounds": 1, "threads": 2, "warm": 0.3, "outage": 0.6, "back": 0.4}
    if quick:
        return {"rounds": 1, "threads": 6, "warm": 1.0, "outage": 2.5, "back": 1.5}
    return {"rounds": 3, "threads": 8, "warm": 2.0, "outage": 5.0, "back": 3.0}


def _caches(url: str, tag: str) -> dict[str, Any]:
    prefix = f"{KEY_PREFIX}django:{tag}"
    caches: dict[str, Any] = {
        "cacheward": {
            "BACKEND": "cacheward.contrib.django.RedisCache",
            "LOCATION": url,
            "KEY_PREFIX": f"{prefix}:cw",
            # The benchmark's key prefix, so REDIS_URL runs only touch the benchmark's keys.
            "OPTIONS": {"BREAKER_RESET": 1.0, "PREFIX": LAYER_PREFIX},
        },
    }
    if importlib.util.find_spec("django_redis") is not None:
        caches["django-redis (IGNORE_EXCEPTIONS)"] = {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": url,
            "KEY_PREFIX": f"{prefix}:dr",
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                "SOCKET_CONNECT_TIMEOUT": 5,
                "SOCKET_TIMEOUT": 5,
                "IGNORE_EXCEPTIONS": True,
            },
        }
        caches["django-redis (defaults)"] = {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": url,
            "KEY_PREFIX": f"{prefix}:dd",
        }
    caches["default"] = caches["cacheward"]
    return caches


def _setup(db_path: str) -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            SECRET_KEY="benchmark-only-" + uuid.uuid4().hex,
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=__name__,
            INSTALLED_APPS=[],
            MIDDLEWARE=[],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": db_path}},
            CACHES={"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}},
            LOGGING_CONFIG=None,
        )
        django.setup()
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS config (customer TEXT, name TEXT, value TEXT)")
        cursor.execute("DELETE FROM config")
        cursor.executemany(
            "INSERT INTO config VALUES (%s, %s, %s)",
            [(f"c{i}", f"s{j}", f"v{i}.{j}") for i in range(KEYS) for j in range(5)],
        )
    connection.close()


def _load_from_database(alias: str, customer: str) -> dict[str, str]:
    from django.db import connection

    with _QUERIES_LOCK:
        _QUERIES[alias] = _QUERIES.get(alias, 0) + 1
    time.sleep(DB_SECONDS)  # the query's cost on a loaded database
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, value FROM config WHERE customer = %s", [customer])
        return dict(cursor.fetchall())


def config_view(request: Any, alias: str, customer: str) -> Any:
    """The view under test: Django's cache API, exactly as a project writes it."""
    from django.core.cache import caches
    from django.http import JsonResponse

    cache = caches[alias]
    value = cache.get_or_set(
        f"config:{customer}", lambda: _load_from_database(alias, customer), timeout=300
    )
    return JsonResponse({"customer": customer, "config": value})


def _urlpatterns() -> list[Any]:
    try:
        from django.urls import path
    except ImportError:  # Django missing: the module still imports (the report says so)
        return []
    return [path("config/<str:alias>/<str:customer>", config_view)]


urlpatterns = _urlpatterns()


def _phase(alias: str, seconds: float, threads: int) -> dict[str, Any]:
    """Request threads for ``seconds``; the figures of the phase."""
    from django.test import Client

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    with _QUERIES_LOCK:
        _QUERIES[alias] = 0

    def worker(index: int) -> None:
        client = Client(raise_request_exception=False)
        n = index
        while time.monotonic() < stop_at:
            customer = f"c{n % KEYS}"
            n += 7
            started = time.perf_counter()
            try:
                status = client.get(f"/config/{alias}/{customer}").status_code
            except Exception:
                status = 599
            took = time.perf_counter() - started
            with lock:
                latencies.append(took)
                if status != 200:
                    errors[0] += 1
            time.sleep(0.002)  # think time: each thread is a stream of users

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(seconds + 120)
    stats = h.summary(latencies)
    return {
        "requests": len(latencies),
        "queries": _QUERIES.get(alias, 0),
        "errors": errors[0],
        "p50": stats.get("p50", float("nan")),
        "p99": stats.get("p99", float("nan")),
        "max": stats.get("max", float("nan")),
    }


def _prime(alias: str) -> None:
    """One request per customer (not counted): Redis holds every key when ``warm`` starts."""
    from django.test import Client

    client = Client(raise_request_exception=False)
    for i in range(KEYS):
        client.get(f"/config/{alias}/c{i}")


def _flush_in_process(alias: str) -> None:
    from django.core.cache import caches

    shared = getattr(caches[alias], "_shared", None)
    if shared is not None:  # cacheward's fallback; django-redis keeps nothing in process
        with shared.lock:
            shared.fallback.clear()


def _round(l2: L2, order: list[str], settings: dict[str, Any], db_path: str) -> dict[str, Any]:
    from django.core.cache import caches
    from django.test import override_settings

    results: dict[str, Any] = {}
    assert l2.url is not None
    for alias in order:
        tag = uuid.uuid4().hex[:8]
        with override_settings(CACHES=_caches(l2.url, tag)):
            if alias not in caches.settings:
                continue
            row: dict[str, Any] = {}
            _prime(alias)
            print(f"  {alias}: warm", flush=True)
            row["warm"] = _phase(alias, settings["warm"], settings["threads"])
            print(
                f"  {alias}: outage — Redis killed, in-process caches flushed "
                "(cacheward's breaker_opened warnings below are part of the scenario)",
                flush=True,
            )
            l2.down()
            _flush_in_process(alias)
            row["outage"] = _phase(alias, settings["outage"], settings["threads"])
            print(f"  {alias}: back — Redis restarted empty", flush=True)
            l2.up()
            row["back"] = _phase(alias, settings["back"], settings["threads"])
            shared = getattr(caches[alias], "_shared", None)
            if shared is not None:
                shared.layer.close()
            results[alias] = row
        l2.flush()
    return results


def measure(settings: dict[str, Any]) -> dict[str, Any]:
    """Every round of every contender: the raw figures."""
    import tempfile

    db_path = os.path.join(tempfile.mkdtemp(prefix="cacheward-bench-django-"), "db.sqlite3")
    _setup(db_path)
    l2 = L2(fault="down")
    if l2.mode == "absent":
        return {"skipped": l2.reason, "rounds": []}
    l2.start()
    rounds = []
    try:
        for index in range(settings["rounds"]):
            order = list(CONTENDERS) if index % 2 == 0 else list(reversed(CONTENDERS))
            print(f"round {index + 1}/{settings['rounds']} ({', '.join(order)})", flush=True)
            rounds.append(_round(l2, order, settings, db_path))
    finally:
        l2.stop()
    return {"rounds": rounds, "redis": l2.describe()}


def _medians(rounds: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for alias in CONTENDERS:
        runs = [r[alias] for r in rounds if alias in r]
        if not runs:
            continue
        out[alias] = {
            phase: {
                field: h.median(run[phase][field] for run in runs)
                for field in ("requests", "queries", "errors", "p50", "p99", "max")
            }
            for phase in PHASES
        }
    return out


def report(figures: dict[str, Any]) -> None:
    if "skipped" in figures:
        print(f"skipped: {figures['skipped']}")
        return
    medians = figures["medians"]
    rows = []
    for alias, phases in medians.items():
        for phase in PHASES:
            row = phases[phase]
            rows.append(
                [
                    alias,
                    phase,
                    f"{row['requests']:.0f}",
                    f"{row['queries']:.0f}",
                    f"{row['errors']:.0f}",
                    h.fmt_ns(row["p50"]),
                    h.fmt_ns(row["p99"]),
                    h.fmt_ns(row["max"]),
                ]
            )
    h.print_table(
        f"A Django view on cache.get_or_set, {KEYS} customers (medians of "
        f"{len(figures['rounds'])} round(s); {figures['redis']})",
        ["backend", "phase", "requests", "DB queries", "caller errors", "p50", "p99", "max"],
        rows,
    )
    ours = medians.get("cacheward", {}).get("outage")
    for alias in CONTENDERS[1:]:
        theirs = medians.get(alias, {}).get("outage")
        if ours is None or theirs is None:
            continue
        print(
            f"During the outage, {alias} sent {theirs['queries']:.0f} queries to the database "
            f"and failed {theirs['errors']:.0f} requests; cacheward sent {ours['queries']:.0f} "
            f"(about one per customer) and failed {ours['errors']:.0f}."
        )


def run(*, quick: bool) -> dict[str, object]:
    """Measure, print the table, return every raw figure."""
    if importlib.util.find_spec("django") is None:
        print("skipped: Django is not installed (pip install -e '.[bench]')")
        return {"skipped": "django not installed"}
    settings = _settings(quick)
    # django-redis without IGNORE_EXCEPTIONS fails every request of the outage: Django logs each
    # one with its traceback; the table counts them instead.
    logging.getLogger("django_redis").setLevel(logging.CRITICAL)
    logging.getLogger("django.request").setLevel(logging.CRITICAL)
    figures = measure(settings)
    figures["settings"] = settings
    if "skipped" not in figures:
        figures["medians"] = _medians(figures["rounds"])
        ours = figures["medians"].get("cacheward", {}).get("outage")
        if ours is not None:
            figures["targets"] = {
                "cacheward outage": {
                    "value": f"{ours['queries']:.0f} DB queries, {ours['errors']:.0f} errors",
                    "target": f"<= {KEYS} DB queries (one per customer), 0 errors",
                    "met": ours["queries"] <= KEYS and ours["errors"] == 0,
                }
            }
    figures["machine"] = h.machine()
    figures["versions"] = h.versions("cacheward", "django", "django-redis", "redis")
    report(figures)
    return figures
