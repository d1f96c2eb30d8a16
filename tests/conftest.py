"""Shared pytest setup: every lessons/ notebook gets the `notebooks` marker."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if str(item.path).endswith(".ipynb"):
            item.add_marker(pytest.mark.notebooks)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """A run of every built stage on the smoke preset (seconds on a CPU), shared by the tests."""
    import helpers

    runs = tmp_path_factory.mktemp("runs")
    return helpers.train(["--preset", "smoke", "--runs_dir", str(runs), "--name", "pipeline"])
