"""Pulsar Relay shared core."""
