"""The example's routes."""

from __future__ import annotations

from django.urls import path
from examples.django_project.shop import views

urlpatterns = [
    path("customers/<str:customer_id>/config", views.config),
    path("customers/<str:customer_id>/summary", views.summary),
    path("stats", views.stats),
]
