"""Modules the tests import by name; conftest.py files hold only fixtures."""
