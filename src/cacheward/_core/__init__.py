"""The pure core: every decision cacheward makes, with ``now`` passed in.

Nothing under ``cacheward._core`` reads a clock, draws a random number or does I/O; the drivers
(``cacheward._cached`` and friends) do those and feed the results in. This is what keeps the
sync and async drivers thin and lets the property tests run the real decisions on a fake clock.
"""
