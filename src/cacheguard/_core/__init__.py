"""The pure core: every decision cacheguard makes, with ``now`` passed in.

Nothing under ``cacheguard._core`` reads a clock, draws a random number or does I/O; the drivers
(``cacheguard._cached`` and friends) do those and feed the results in. This is what keeps the
sync and async drivers thin and lets the property tests run the real decisions on a fake clock.
"""
