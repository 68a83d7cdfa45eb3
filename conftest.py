"""Root conftest: fixtures shared by every member's tests (real Valkey, per-test topics)."""

pytest_plugins = ["relaycore.testing.plugin"]
