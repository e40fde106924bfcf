"""A small Django project on cacheward: the cache backend and the settings-configured guard.

See README.md in this folder; ``tests/test_django_example.py`` runs it with Django's test
client against a real Redis.
"""
