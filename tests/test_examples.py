"""The examples under ``examples/`` run, and do what their docstrings promise, on a real Redis.

FastAPI through its ``TestClient``, Flask through its test client (both with concurrent request
threads), the worker as a separate process for a bounded number of jobs. Every test uses its own
cache namespace and queue name, so runs never see each other's keys.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")

pytest.importorskip("fastapi")
pytest.importorskip("flask")
from examples import fastapi_service, flask_service, worker  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from flask import Flask  # noqa: E402

pytestmark = pytest.mark.redis


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    name = f"test-examples-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"*{name}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def flask_app() -> Iterator[Callable[..., Flask]]:
    """``flask_service.create_app``, with every app's Redis client closed at teardown."""
    apps: list[Flask] = []

    def make(**settings: Any) -> Flask:
        app = flask_service.create_app(**settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["cacheward"]["redis"].close()


def closed_port_url() -> str:
    """A Redis URL on a loopback port where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def parallel(n: int, call: Callable[[], T]) -> list[T]:
    """Run ``call`` from ``n`` threads at once; return the results."""
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(call) for _ in range(n)]
        return [f.result(timeout=30) for f in futures]


# ------------------------------------------------------------------------------ FastAPI


def test_fastapi_serves_from_cache_invalidates_and_exports_metrics(
    redis_url: str, namespace: str
) -> None:
    db = fastapi_service.Database()
    app = fastapi_service.create_app(redis_url=redis_url, db=db, namespace=namespace)
    with TestClient(app) as client:
        first = client.get("/customers/c1/config")
        assert first.status_code == 200
        assert first.json() == {"customer": "c1", "plan": "pro"}
        assert client.get("/customers/c1/config").json() == first.json()
        assert db.queries == 1
        # Unknown customers are cached too: a flood of bad ids reaches the database once.
        assert [client.get("/customers/nobody/config").status_code for _ in range(3)] == [404] * 3
        assert db.queries == 2
        assert client.delete("/customers/c1/config").status_code == 204
        assert client.get("/customers/c1/config").status_code == 200
        assert db.queries == 3
        stats = client.get("/stats").json()
        assert stats["cache"]["hits"] == 3
        assert stats["cache"]["misses"] == 3
        assert stats["cache"]["invalidations"] == 1
        assert stats["attempts"] == 3  # cw.guard: each database call took a token
        metrics = client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        function = f"{namespace}.load_config:v1"
        assert f'cacheward_calls_total{{function="{function}",outcome="hit"}} 3.0' in metrics.text
        assert f'cacheward_fetches_total{{function="{function}"}} 3.0' in metrics.text
        assert f'cacheward_backend_attempts_total{{function="{function}"}} 3.0' in metrics.text


def test_fastapi_concurrent_requests_make_one_database_call(redis_url: str, namespace: str) -> None:
    db = fastapi_service.Database(latency=0.2)
    app = fastapi_service.create_app(redis_url=redis_url, db=db, namespace=namespace)
    with TestClient(app) as client:
        statuses = parallel(20, lambda: client.get("/customers/c7/config").status_code)
    assert statuses == [200] * 20
    assert db.queries == 1


def test_fastapi_a_second_process_reads_the_shared_redis_layer(
    redis_url: str, namespace: str
) -> None:
    db1, db2 = fastapi_service.Database(), fastapi_service.Database()
    app1 = fastapi_service.create_app(redis_url=redis_url, db=db1, namespace=namespace)
    app2 = fastapi_service.create_app(redis_url=redis_url, db=db2, namespace=namespace)
    with TestClient(app1) as one:
        assert one.get("/customers/c2/config").status_code == 200
    with TestClient(app2) as two:
        assert two.get("/customers/c2/config").json() == {"customer": "c2", "plan": "free"}
    assert (db1.queries, db2.queries) == (1, 0)


def test_fastapi_keeps_serving_when_redis_refuses_connections() -> None:
    db = fastapi_service.Database()
    app = fastapi_service.create_app(redis_url=closed_port_url(), db=db, namespace="down")
    with TestClient(app) as client:
        statuses = [client.get(f"/customers/c{i % 3}/config").status_code for i in range(12)]
        metrics = client.get("/metrics").text
    assert statuses == [200] * 12
    assert db.queries == 3  # one per key: L1 still caches, Redis failures are misses
    assert 'outcome="layer_error"' in metrics
    assert 'outcome="breaker_opened"' in metrics


# ------------------------------------------------------------------------------ Flask


def test_flask_threads_share_one_database_call_per_key(
    redis_url: str, namespace: str, flask_app: Callable[..., Flask]
) -> None:
    db = flask_service.Database(latency=0.2)
    app = flask_app(redis_url=redis_url, db=db, namespace=namespace)
    client = app.test_client()
    responses = parallel(20, lambda: client.get("/customers/c4/config"))
    assert [r.status_code for r in responses] == [200] * 20
    assert db.queries == 1
    stats = client.get("/stats").get_json()
    assert stats["misses"] == 1
    assert stats["coalesced_waits"] + stats["hits"] == 19
    assert client.delete("/customers/c4/config").status_code == 204
    assert client.get("/customers/nobody/config").status_code == 404


def test_flask_rate_limit_answers_503_instead_of_queueing_on_the_database(
    redis_url: str, namespace: str, flask_app: Callable[..., Flask]
) -> None:
    db = flask_service.Database(latency=0.0)
    app = flask_app(redis_url=redis_url, db=db, namespace=namespace, rate=1, burst=1)
    client = app.test_client()
    responses = [client.get(f"/customers/c{i}/config") for i in range(4)]
    assert responses[0].status_code == 200
    refused = [r for r in responses[1:] if r.status_code == 503]
    assert refused, [r.status_code for r in responses]
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
    # Over the test's length T (well under 3 s), at most burst + rate * T database calls.
    assert db.queries <= 3


# ------------------------------------------------------------------------------ the worker


def test_worker_process_rebuilds_queued_configs_into_the_shared_layer(
    redis_url: str, namespace: str, flask_app: Callable[..., Flask]
) -> None:
    queue = f"{namespace}:queue"
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        client.lpush(queue, *[f"c{i}" for i in range(30)], "ghost-1", "ghost-2")
    finally:
        client.close()
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "worker.py"),
            "--redis-url",
            redis_url,
            "--namespace",
            namespace,
            "--queue",
            queue,
            "--iterations",
            "32",
            "--idle-exit",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["jobs"] == 32
    assert report["rebuilt"] == 30
    assert report["unknown"] == 2
    assert report["db_queries"] == 32
    # A web process with the same namespace now reads them from Redis, not its database.
    web_db = flask_service.Database()
    app = flask_app(redis_url=redis_url, db=web_db, namespace=namespace)
    web = app.test_client()
    assert web.get("/customers/c5/config").get_json() == {"customer": "c5", "plan": "pro"}
    assert web_db.queries == 0


def test_the_worker_and_the_web_processes_share_one_token_bucket(
    redis_url: str, namespace: str, flask_app: Callable[..., Flask]
) -> None:
    queue = f"{namespace}:queue"
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        client.lpush(queue, "c1", "c2", "c3")
    finally:
        client.close()
    # A bucket of 3 tokens that refills one token per 1,000 s: the worker's 3 rebuilds empty it.
    bucket = ["--rate", "0.001", "--burst", "3"]
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "worker.py"),
            *("--redis-url", redis_url, "--namespace", namespace, "--queue", queue),
            *("--iterations", "3", "--idle-exit", "1", *bucket),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    db = flask_service.Database()
    app = flask_app(redis_url=redis_url, db=db, namespace=namespace, rate=0.001, burst=3)
    web = app.test_client()
    assert web.get("/customers/c2/config").status_code == 200  # rebuilt by the worker: a hit
    refused = web.get("/customers/c50/config")  # a miss, and the shared bucket is empty
    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) > 100
    assert db.queries == 0


def test_worker_waits_for_tokens_instead_of_queueing_on_the_database(
    redis_url: str, namespace: str
) -> None:
    queue = f"{namespace}:queue"
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        client.lpush(queue, "c1", "c2", "c3")
    finally:
        client.close()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    report = worker.run(
        redis_url=redis_url,
        namespace=namespace,
        queue_name=queue,
        iterations=20,
        idle_exit=0.5,
        rate=1.5,  # a token every 0.67 s, longer than the fetch's max_wait of 0.5 s
        burst=1,
        sleep=sleep,
    )
    assert report["rebuilt"] == 3
    assert report["rate_limited"] >= 1
    assert len(slept) == report["rate_limited"]
    assert report["db_queries"] == 3  # refused attempts never reached the database
