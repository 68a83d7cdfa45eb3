"""Pulsar Relay gateway service."""
