"""Shared pytest setup: every lessons/ notebook gets the `notebooks` marker."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if str(item.path).endswith(".ipynb"):
            item.add_marker(pytest.mark.notebooks)
