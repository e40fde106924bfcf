"""cacheward's pytest plugin (registered through the ``pytest11`` entry point).

It only adds fixtures; nothing changes for a test that does not ask for them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cacheward._testmode import disabled


@pytest.fixture
def cacheward_disabled() -> Iterator[disabled]:
    """Caching is off in the whole process for the test (``cacheward.testing.disabled()``).

    Rate limits and retries stay on; for a test that needs them off too, use
    ``with cacheward.testing.disabled(limits=True, retries=True):`` in the test instead.
    """
    scope = disabled()
    with scope:
        yield scope
