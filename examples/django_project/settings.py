"""Settings of the example project (``DJANGO_SETTINGS_MODULE=examples.django_project.settings``).

Everything that differs between machines comes from the environment: ``REDIS_URL`` (a
``redis://`` or ``redis+sentinel://`` URL), ``EXAMPLE_DB`` (the SQLite file) and
``EXAMPLE_KEY_PREFIX`` (so test runs never share keys).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
KEY_PREFIX = os.environ.get("EXAMPLE_KEY_PREFIX", "example")

SECRET_KEY = os.environ.get("EXAMPLE_SECRET_KEY", "example-only-not-a-secret-0123456789")
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "examples.django_project.urls"
INSTALLED_APPS = ["django.contrib.contenttypes", "examples.django_project.shop"]
MIDDLEWARE: list[str] = []
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("EXAMPLE_DB", str(Path(tempfile.gettempdir()) / "example.sqlite3")),
    }
}

# The cache framework on cacheward: cache.get/set/get_or_set keep working when Redis does not.
CACHES = {
    "default": {
        "BACKEND": "cacheward.contrib.django.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": KEY_PREFIX,
        "TIMEOUT": 300,
        "OPTIONS": {"SOCKET_TIMEOUT": 0.1, "BREAKER_RESET": 5.0, "FILL_TIMEOUT": 5.0},
    }
}

# The decorators (cacheward.contrib.django.cached / guard) take their layers and limiter here.
CACHEWARD = {
    "REDIS_URL": REDIS_URL,
    "NAMESPACE": KEY_PREFIX,
    "RATE": 50,
    "BURST": 100,
    "LIMITER_NAME": f"{KEY_PREFIX}-db",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"cacheward": {"level": "WARNING"}},
}
