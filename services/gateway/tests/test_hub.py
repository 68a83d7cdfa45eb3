"""The hub's fan-out, the feed's chain check and seam, and delivery tracing."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from relay_gateway.hot import Batch, Message
from relay_gateway.hub import Hub, Topic
from relay_gateway.metrics import GatewayMetrics
from relay_gateway.readers import ReaderPool
from relaycore.ids import ZERO, StreamId
from relaycore.settings import Settings
from relaycore.streams import StreamEntry
from relaycore.valkey import ValkeyClient


class Recorder:
    """A sink that records what a feed hands it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.batches: list[list[str]] = []

    def deliver(self, message: Message) -> None:
        self.events.append(("message", str(message.id)))

    def deliver_batch(self, batch: Batch) -> None:
        self.batches.append([str(message.id) for message in batch.messages])
        for message in batch.messages:
            self.deliver(message)

    def gap(self, topic: str, reason: str, first: Message) -> None:
        self.events.append((reason, str(first.id)))

    def overflow(self) -> None:
        self.events.append(("overflow", ""))


def entry(ms: int, previous: int, headers: bytes | None = None) -> StreamEntry:
    prev = StreamId(previous, 0) if previous else ZERO
    return StreamEntry(StreamId(ms, 0), b'{"n":%d}' % ms, headers, prev)


def make_hub(client: ValkeyClient, **overrides: object) -> Hub:
    settings = Settings(**overrides)  # type: ignore[arg-type]  # test overrides
    metrics = GatewayMetrics()
    return Hub(settings, client, metrics, ReaderPool([], settings, metrics))


def live_topic(hub: Hub) -> Topic:
    topic = Topic("orders")
    hub.topics[topic.name] = topic
    return topic


async def test_live_chain_reports_trimmed_and_reset(valkey_client: ValkeyClient) -> None:
    hub = make_hub(valkey_client)
    topic = live_topic(hub)
    sink = Recorder()
    hub.attach(topic, sink).go_live()
    hub.dispatch(topic, [entry(1, 0), entry(2, 1)])
    hub.dispatch(topic, [entry(5, 4)])  # 3 and 4 were trimmed before the reader saw them
    hub.dispatch(topic, [entry(9, 0)])  # the stream was re-created
    assert sink.events == [
        ("message", "1-0"),
        ("message", "2-0"),
        ("trimmed", "5-0"),
        ("message", "5-0"),
        ("reset", "9-0"),
        ("message", "9-0"),
    ]


async def test_a_live_batch_is_one_sink_call_unless_its_chain_breaks(
    valkey_client: ValkeyClient,
) -> None:
    hub = make_hub(valkey_client)
    topic = live_topic(hub)
    sink = Recorder()
    hub.attach(topic, sink).go_live()
    hub.dispatch(topic, [entry(1, 0), entry(2, 1), entry(3, 2)])
    hub.dispatch(topic, [entry(6, 4), entry(7, 6)])  # 4 and 5 trimmed: checked one by one
    hub.dispatch(topic, [entry(8, 7), entry(10, 9)])  # a break inside the batch
    assert sink.batches == [["1-0", "2-0", "3-0"]]
    assert sink.events == [
        ("message", "1-0"),
        ("message", "2-0"),
        ("message", "3-0"),
        ("trimmed", "6-0"),
        ("message", "6-0"),
        ("message", "7-0"),
        ("message", "8-0"),
        ("trimmed", "10-0"),
        ("message", "10-0"),
    ]


def test_batch_packs_its_events_into_one_shared_frame() -> None:
    messages = [Message.from_entry(b'"t"', entry(n, n - 1)) for n in (1, 2)]
    batch = Batch(messages)
    assert batch.contiguous
    assert batch.ws_bytes == messages[0].ws_bytes + b"\n" + messages[1].ws_bytes
    size = len(batch.ws_bytes)
    assert 125 < size < 65536  # the 16-bit length form
    assert batch.ws_frame == bytes((0x81, 126)) + size.to_bytes(2, "big") + batch.ws_bytes
    assert batch.ws_frame is batch.ws_frame  # built once, shared by every subscriber
    assert not Batch([messages[0], Message.from_entry(b'"t"', entry(5, 4))]).contiguous


async def test_seam_drops_what_history_delivered(valkey_client: ValkeyClient) -> None:
    hub = make_hub(valkey_client)
    topic = live_topic(hub)
    sink = Recorder()
    feed = hub.attach(topic, sink)
    # Live messages arrive while history is being read...
    hub.dispatch(topic, [entry(3, 2), entry(4, 3)])
    # ...history overlaps them...
    feed.resume_after(StreamId(1, 0), check=True)
    for message in [Message.from_entry(topic.json, e) for e in (entry(2, 1), entry(3, 2))]:
        feed.deliver(message)
    feed.go_live()
    hub.dispatch(topic, [entry(5, 4)])
    assert sink.events == [("message", f"{n}-0") for n in (2, 3, 4, 5)]


async def test_catch_up_buffer_is_bounded(valkey_client: ValkeyClient) -> None:
    hub = make_hub(valkey_client, max_queue_bytes=100)
    topic = live_topic(hub)
    sink = Recorder()
    hub.attach(topic, sink)  # never goes live
    hub.dispatch(topic, [entry(n, n - 1) for n in range(1, 40)])
    assert sink.events == [("overflow", "")]


async def test_delivery_span_links_to_the_producer(valkey_client: ValkeyClient) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings()
    metrics = GatewayMetrics()
    hub = Hub(
        settings,
        valkey_client,
        metrics,
        ReaderPool([], settings, metrics),
        provider.get_tracer("t"),
    )
    topic = live_topic(hub)
    sink = Recorder()
    hub.attach(topic, sink).go_live()
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = b'{"traceparent":"00-%s-%s-01"}' % (trace_id.encode(), span_id.encode())
    hub.dispatch(topic, [entry(1, 0, headers)])
    assert sink.events == [("message", "1-0")]
    (span,) = exporter.get_finished_spans()
    assert span.name == "relay.deliver"
    assert span.links[0].context.trace_id == int(trace_id, 16)
    assert span.links[0].context.span_id == int(span_id, 16)
    # ... and is its child: one trace from publish to delivery.
    assert span.context.trace_id == int(trace_id, 16)
    assert span.parent is not None
    assert span.parent.span_id == int(span_id, 16)
    provider.shutdown()
