"""Views: one through Django's cache API, one through a settings-configured ``guard``.

``config`` is the code a Django project already has — ``cache.get_or_set`` — and gets
cacheward's guarantees from the backend alone. ``summary`` uses the decorator, whose memory and
Redis layers and shared token bucket come from ``settings.CACHEWARD``.
"""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_http_methods
from examples.django_project.shop.models import Setting

import cacheward as cw
from cacheward.contrib import django as cw_django

#: Database reads made by the views (the tests compare it with the number of requests).
QUERIES = {"config": 0, "summary": 0}
_LOCK = threading.Lock()


def _read(customer_id: str, counter: str) -> dict[str, str]:
    with _LOCK:
        QUERIES[counter] += 1
    rows = Setting.objects.filter(customer=customer_id).order_by("name")
    return {row.name: row.value for row in rows}


def build_config(customer_id: str) -> dict[str, str]:
    return _read(customer_id, "config")


@require_http_methods(["GET", "DELETE"])
def config(request: HttpRequest, customer_id: str) -> HttpResponse:
    key = f"config:{customer_id}"
    if request.method == "DELETE":
        cache.delete(key)
        return HttpResponse(status=204)
    value = cache.get_or_set(key, lambda: build_config(customer_id), timeout=60)
    return JsonResponse({"customer": customer_id, "config": value})


@cw_django.guard(ttl=60, stale_ttl=600, namespace="example-summary")
def load_summary(customer_id: str) -> dict[str, Any]:
    settings = _read(customer_id, "summary")
    return {"settings": len(settings), "names": sorted(settings)}


@require_http_methods(["GET", "DELETE"])
def summary(request: HttpRequest, customer_id: str) -> HttpResponse:
    if request.method == "DELETE":
        load_summary.invalidate(customer_id)
        return HttpResponse(status=204)
    try:
        return JsonResponse(load_summary(customer_id))
    except cw.RateLimited as exc:
        response = JsonResponse({"error": "busy"}, status=503)
        response["Retry-After"] = str(max(1, round(exc.retry_after or 1)))
        return response


def stats(request: HttpRequest) -> HttpResponse:
    return JsonResponse(
        {"queries": QUERIES, "cache": cache.stats(), "summary": str(load_summary.stats())}
    )
