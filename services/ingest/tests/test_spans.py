"""Tracing on: a span per publish, exported over OTLP, its traceparent stored in the message."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import msgspec
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from relaycore.ids import StreamId
from relaycore.streams import read_after
from relaycore.valkey import ValkeyClient

from .conftest import ingest_settings, running_ingest

PRODUCER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


class Collector(ThreadingHTTPServer):
    """A real HTTP endpoint that keeps the OTLP trace exports it receives."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.exports: list[ExportTraceServiceRequest] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/traces"


class _Handler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.exports.append(ExportTraceServiceRequest.FromString(body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_publish_span_is_exported_and_its_traceparent_stored(
    valkey_url: str, collector: Collector, valkey_client: ValkeyClient, topic: str
) -> None:
    settings = ingest_settings(valkey_url, otlp_endpoint=collector.url)
    async with running_ingest(settings) as ingest:
        single = await ingest.post(
            "/api/v1/messages",
            json={"topic": topic, "payload": 1, "headers": {"kept": "yes"}},
            headers={"traceparent": f"00-{PRODUCER_TRACE}-00f067aa0ba902b7-01"},
        )
        batch = await ingest.post(
            "/api/v1/messages/batch",
            json={"messages": [{"topic": topic, "payload": 2}, {"topic": topic, "payload": 3}]},
        )
    # Leaving the app flushed its spans to the collector.
    assert (single.status_code, batch.status_code) == (201, 201)
    stored = await read_after(valkey_client, topic, StreamId(0, 0), 10)
    headers = [msgspec.json.decode(e.headers or b"{}") for e in stored]
    assert headers[0]["kept"] == "yes"
    version, trace_id, span_id, flags = headers[0]["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", PRODUCER_TRACE, "01")
    assert span_id != "00f067aa0ba902b7"  # ingest's own span, a child of the producer's
    assert all("traceparent" in h for h in headers[1:])
    assert headers[1]["traceparent"] != headers[2]["traceparent"]

    spans = [
        span
        for export in collector.exports
        for resource in export.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    publish = {span.span_id.hex(): span for span in spans if span.name == "relay.publish"}
    assert len(publish) == 3
    first = publish[span_id]
    assert first.trace_id.hex() == PRODUCER_TRACE
    assert first.parent_span_id.hex() == "00f067aa0ba902b7"
    attributes = {a.key: a.value.string_value for a in first.attributes}
    assert attributes["messaging.destination.name"] == topic
    assert attributes["messaging.message.id"] == single.json()["id"]
