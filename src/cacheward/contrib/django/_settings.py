"""Decorators whose layers and limiter come from ``settings.CACHEWARD``.

Each decorated function gets its own :class:`~cacheward.MemoryLayer`; they share one
:class:`~cacheward.RedisLayer` and one limiter (a :class:`~cacheward.RedisTokenBucket` when
Redis is configured), built on first use and rebuilt when the setting changes (Django's
``override_settings`` in tests included).
"""

from __future__ import annotations

from typing import Any, Final

from django.conf import settings
from django.core.signals import setting_changed

import cacheward as cw
from cacheward import _forksafe
from cacheward._cached import Decorator as _Decorator
from cacheward._config import Duration
from cacheward._errors import ConfigurationError
from cacheward._guard import _GuardDecorator

__all__ = ["cached", "guard", "layers", "limiter", "reset"]

DEFAULTS: Final[dict[str, Any]] = {
    "REDIS_URL": None,
    "REDIS_TIMEOUT": 0.1,
    "NAMESPACE": "",
    "MEMORY_MAXSIZE": 10_000,
    "SERIALIZER": "json",
    "RATE": 100.0,
    "BURST": None,
    "SHARED_LIMITER": True,
    "LIMITER_NAME": "django",
    "FALLBACK_SHARE": 0.1,
}

_LOCK = _forksafe.lock()
_BUILT: dict[str, Any] = {}
_UNSET: Any = object()


def _config() -> dict[str, Any]:
    given = dict(getattr(settings, "CACHEWARD", None) or {})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ConfigurationError(
            f"unknown settings.CACHEWARD keys {', '.join(unknown)} "
            f"(known: {', '.join(sorted(DEFAULTS))})"
        )
    return {**DEFAULTS, **given}


def _serializer(config: dict[str, Any]) -> cw.Serializer:
    chosen = config["SERIALIZER"]
    if isinstance(chosen, cw.Serializer):
        return chosen
    if chosen == "json":
        return cw.JsonSerializer()
    if chosen == "pickle":
        from cacheward.contrib.django._backend import _serializer as backend_serializer

        return backend_serializer({"SERIALIZER": "pickle", "SIGNING_KEY": None})
    raise ConfigurationError(
        f"settings.CACHEWARD['SERIALIZER'] must be 'json', 'pickle' or a cacheward.Serializer, "
        f"got {chosen!r}"
    )


def _shared_layer() -> cw.RedisLayer | None:
    with _LOCK:
        if "layer" not in _BUILT:
            config = _config()
            url = config["REDIS_URL"]
            _BUILT["layer"] = (
                None
                if url is None
                else cw.RedisLayer.from_url(
                    url,
                    timeout=config["REDIS_TIMEOUT"],
                    namespace=config["NAMESPACE"],
                    serializer=_serializer(config),
                )
            )
        layer: cw.RedisLayer | None = _BUILT["layer"]
        return layer


def layers() -> list[Any]:
    """A new :class:`~cacheward.MemoryLayer` (``MEMORY_MAXSIZE``), then the shared Redis layer
    (``REDIS_URL``, ``REDIS_TIMEOUT``, ``NAMESPACE``, ``SERIALIZER``) when configured."""
    found = [cw.MemoryLayer(maxsize=_config()["MEMORY_MAXSIZE"])]
    shared = _shared_layer()
    return found if shared is None else [*found, shared]


def limiter() -> cw.Limiter:
    """The limiter every :func:`guard` function shares: a :class:`~cacheward.RedisTokenBucket`
    named ``LIMITER_NAME`` on ``REDIS_URL`` (``SHARED_LIMITER``), else a
    :class:`~cacheward.TokenBucket`; ``RATE`` and ``BURST`` size it."""
    with _LOCK:
        if "limiter" not in _BUILT:
            config = _config()
            rate, burst = config["RATE"], config["BURST"]
            url = config["REDIS_URL"]
            if url is not None and config["SHARED_LIMITER"]:
                _BUILT["limiter"] = cw.RedisTokenBucket(
                    cw.redis_client(url, timeout=config["REDIS_TIMEOUT"]),
                    name=config["LIMITER_NAME"],
                    rate=rate,
                    burst=burst,
                    fallback_share=config["FALLBACK_SHARE"],
                )
            else:
                _BUILT["limiter"] = cw.TokenBucket(
                    rate=rate, burst=rate if burst is None else burst
                )
        bucket: cw.Limiter = _BUILT["limiter"]
        return bucket


def cached(*, ttl: Duration, layers: Any = _UNSET, **options: Any) -> _Decorator:
    """``cw.cached(ttl=..., **options)`` with ``layers=`` from ``settings.CACHEWARD``
    (an explicit ``layers=`` wins)."""
    chosen = globals()["layers"]() if layers is _UNSET else layers
    return cw.cached(ttl=ttl, layers=chosen, **options)


def guard(
    *, ttl: Duration, layers: Any = _UNSET, limiter: Any = _UNSET, **options: Any
) -> _GuardDecorator:
    """``cw.guard(ttl=..., **options)`` with ``layers=`` and ``limiter=`` from
    ``settings.CACHEWARD`` (explicit arguments win)."""
    chosen_layers = globals()["layers"]() if layers is _UNSET else layers
    chosen_limiter = globals()["limiter"]() if limiter is _UNSET else limiter
    return cw.guard(ttl=ttl, layers=chosen_layers, limiter=chosen_limiter, **options)


def reset() -> None:
    """Forget the shared layer and limiter (closing what was built); the next decoration
    builds them again from the settings. Called when ``settings.CACHEWARD`` changes."""
    with _LOCK:
        built = dict(_BUILT)
        _BUILT.clear()
    layer = built.get("layer")
    if layer is not None:
        layer.close()
    bucket = built.get("limiter")
    if isinstance(bucket, cw.RedisTokenBucket):
        bucket.client.close()


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in ("CACHEWARD", "SECRET_KEY"):
        reset()


setting_changed.connect(_on_setting_changed, dispatch_uid="cacheward.contrib.django")
