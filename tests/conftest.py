"""Root conftest: fixtures for tests on the real control plane (conveyor.devcluster.pytest_plugin)."""

pytest_plugins = ["conveyor.devcluster.pytest_plugin"]
