"""Another process of the recovery tests (tests/test_recovery.py): run as a script.

``python recovery_worker.py URL SPACE``, then commands on stdin, one a line, each answered with
one line on stdout:

    invalidate KEY   ``config.invalidate(KEY)``: ``pending`` or ``done``
    tags TAG         ``cw.invalidate_tags(TAG)``: ``pending`` or ``done``
    replay           wait (at most 30 s) until nothing is pending any more: ``replayed``
    quit             close the layer and exit: ``bye``

Its cached function is the test's (namespace ``config`` on a layer of namespace ``SPACE``, the
same tags), so its invalidations are of the test's entries.
"""

from __future__ import annotations

import sys
import time

import cacheward as cw


def main() -> None:
    url, space = sys.argv[1:3]
    # A short breaker period: a kept invalidation is replayed soon after Redis answers again.
    layer = cw.RedisLayer.from_url(url, namespace=space, socket_timeout=0.5, breaker_reset=0.2)

    @cw.cached(
        ttl=600,
        layers=[cw.MemoryLayer(maxsize=100), layer],
        namespace="config",
        tags=lambda customer: [f"customer:{customer}"],
    )
    def config(customer: str) -> str:
        return "worker"

    config.get("warm-up")  # connected (and the layer's scripts reachable) before any fault
    print("ready", flush=True)
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "invalidate":
            print("done" if config.invalidate(argument) else "pending", flush=True)
        elif command == "tags":
            print("done" if cw.invalidate_tags(argument) else "pending", flush=True)
        elif command == "replay":
            deadline = time.monotonic() + 30
            while config.stats().invalidations_pending and time.monotonic() < deadline:
                config.get("warm-up")  # a read replays what is kept first
                time.sleep(0.05)
            print("replayed" if not config.stats().invalidations_pending else "stuck", flush=True)
        elif command == "quit":
            break
    layer.close()
    print("bye", flush=True)


if __name__ == "__main__":
    main()
