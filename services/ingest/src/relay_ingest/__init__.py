"""Pulsar Relay ingest service."""
