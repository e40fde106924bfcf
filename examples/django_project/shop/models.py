"""One table: a customer's settings, as rows (what the cache saves the database from reading)."""

from __future__ import annotations

from django.db import models


class Setting(models.Model):
    customer = models.CharField(max_length=64, db_index=True)
    name = models.CharField(max_length=64)
    value = models.CharField(max_length=256)

    class Meta:
        app_label = "shop"
