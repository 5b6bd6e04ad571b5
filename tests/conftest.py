"""The suite's fixtures come from tests/support, loaded here as plugins (pytest reads
``pytest_plugins`` only in this top-level conftest). Tests import helpers from tests.support."""

pytest_plugins = [
    "tests.support.fixtures_stores",
    "tests.support.fixtures_platform",
    "tests.support.chaos_report",
    "tests.support.replica",
    "tests.support.redis_cluster",
]
