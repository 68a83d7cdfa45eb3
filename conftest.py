"""Root conftest: fixtures shared by every member's tests (real Valkey, per-test topics)."""

pytest_plugins = ["relay_devtools.testing.plugin"]
