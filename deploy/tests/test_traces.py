"""One trace from producer to consumer: a real ingest and gateway export OTLP/HTTP to a real
in-test receiver (decoded with opentelemetry-proto), and the publish span and the delivery
span it caused share one trace, the delivery a child of (and linked to) the publish.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from relay_devtools.testing.gateway import ws_client

from .conftest import StartStack

# The producer's own trace, as its HTTP client would propagate it (W3C traceparent).
PRODUCER_TRACE = "0af7651916cd43dd8448eb211c80319c"
PRODUCER_SPAN = "b7ad6b7169203331"


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace endpoint that keeps every span with its service.name."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[tuple[str, Span]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/traces"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        assert self.path == "/v1/traces"
        assert self.headers["content-type"] == "application/x-protobuf"
        request = ExportTraceServiceRequest.FromString(
            self.rfile.read(int(self.headers["content-length"]))
        )
        with self.server.lock:
            for resource_spans in request.resource_spans:
                attributes = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.server.spans.append((attributes["service.name"], span))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_one_trace_from_publish_to_delivery(
    relay_stack: StartStack, receiver: Receiver, topic: str
) -> None:
    async with (
        relay_stack(otlp_endpoint=receiver.url) as stack,
        ws_client(stack.gateway) as ws,
        httpx.AsyncClient(base_url=stack.ingest.url, timeout=20) as ingest,
    ):
        await ws.subscribe(topic)
        response = await ingest.post(
            "/api/v1/messages",
            json={"topic": topic, "payload": {"order": 1}, "headers": {"k": "v"}},
            headers={"traceparent": f"00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01"},
        )
        assert response.status_code == 201
        (message,) = await ws.messages(1)
    # Leaving the stack shut both services down, which flushes their span exporters.
    assert message["id"] == response.json()["id"]
    assert message["headers"]["k"] == "v"
    _, trace_id, publish_span_id, _ = message["headers"]["traceparent"].split("-")
    assert trace_id == PRODUCER_TRACE

    with receiver.lock:
        spans = list(receiver.spans)
    (publish,) = [
        s for service, s in spans if service == "relay-ingest" and s.name == "relay.publish"
    ]
    (deliver,) = [
        s for service, s in spans if service == "relay-gateway" and s.name == "relay.deliver"
    ]
    assert publish.kind == Span.SPAN_KIND_PRODUCER
    assert deliver.kind == Span.SPAN_KIND_CONSUMER
    # producer → publish → delivery: one trace id, each span the child of the one before.
    assert publish.trace_id.hex() == deliver.trace_id.hex() == PRODUCER_TRACE
    assert publish.parent_span_id.hex() == PRODUCER_SPAN
    assert publish.span_id.hex() == publish_span_id
    assert deliver.parent_span_id == publish.span_id
    (link,) = deliver.links
    assert (link.trace_id, link.span_id) == (publish.trace_id, publish.span_id)
    attributes = {a.key: a.value.string_value for a in deliver.attributes}
    assert attributes["messaging.destination.name"] == topic
    assert attributes["messaging.message.id"] == message["id"]
    # Publish happens before delivery.
    assert publish.start_time_unix_nano <= deliver.start_time_unix_nano
