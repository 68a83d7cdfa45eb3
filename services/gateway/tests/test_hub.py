"""The hub's fan-out, the feed's chain check and seam, topic lifecycle and delivery tracing —
its logic alone, on an in-memory stream source (no server: the hub talks only to the seam)."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from relay_gateway.hot import Batch, Message
from relay_gateway.hub import Hub, Topic
from relay_gateway.metrics import GatewayMetrics
from relay_gateway.recovery import catch_up, decide
from relay_gateway.source import Unavailable
from relaycore.ids import ZERO, Cursor, StreamId, parse_cursor
from relaycore.settings import Settings
from relaycore.streams import StreamEntry

from .memory_source import MemorySource


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


def make_hub(source: MemorySource | None = None, **overrides: object) -> Hub:
    settings = Settings(**overrides)  # type: ignore[arg-type]  # test overrides
    return Hub(settings, source or MemorySource(), GatewayMetrics())


def live_topic(hub: Hub) -> Topic:
    topic = Topic("orders")
    hub.topics[topic.name] = topic
    return topic


async def test_live_chain_reports_trimmed_and_reset() -> None:
    hub = make_hub()
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


async def test_a_live_batch_is_one_sink_call_unless_its_chain_breaks() -> None:
    hub = make_hub()
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


async def test_seam_drops_what_history_delivered() -> None:
    hub = make_hub()
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


async def test_catch_up_buffer_is_bounded() -> None:
    hub = make_hub(None, max_queue_bytes=100)
    topic = live_topic(hub)
    sink = Recorder()
    hub.attach(topic, sink)  # never goes live
    hub.dispatch(topic, [entry(n, n - 1) for n in range(1, 40)])
    assert sink.events == [("overflow", "")]


async def test_delivery_span_links_to_the_producer() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings()
    metrics = GatewayMetrics()
    hub = Hub(settings, MemorySource(), metrics, provider.get_tracer("t"))
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


# -- through the seam: topic lifecycle and resumes, on the in-memory source --------------------


def _cursor(text: str) -> Cursor:
    cursor = parse_cursor(text)
    assert cursor is not None
    return cursor


async def test_a_new_topic_follows_from_the_streams_end_and_lingers_then_unfollows() -> None:
    source = MemorySource()
    source.append("orders", b"1", b"2")
    hub = make_hub(source, topic_linger=5.0)
    source.start(hub.dispatch, None)  # type: ignore[arg-type]  # the memory source takes no group
    topic = await hub.acquire("orders")
    assert source.followed == {"orders": topic}
    assert topic.position == source.last["orders"]  # live starts after what exists
    sink = Recorder()
    hub.attach(topic, sink).go_live()
    (third,) = source.append("orders", b"3")
    source.read_live()
    source.read_live()  # a read that overlaps the last one delivers nothing twice
    assert sink.events == [("message", str(third))]
    hub.detach(next(iter(topic.feeds)))
    assert topic.idle_since is not None
    hub.drop_idle(topic.idle_since + 1.0)  # within the linger: kept
    assert "orders" in hub.topics
    hub.drop_idle(topic.idle_since + 6.0)
    assert "orders" not in hub.topics
    assert source.followed == {}


async def test_storage_down_fails_the_subscribe_and_keeps_no_topic() -> None:
    source = MemorySource()
    source.down = True
    hub = make_hub(source)
    try:
        await hub.acquire("orders")
    except Unavailable:
        pass
    else:
        raise AssertionError("acquire succeeded with the storage down")
    assert hub.topics == {}
    assert source.followed == {}
    source.down = False
    assert (await hub.acquire("orders")).name == "orders"  # and works once it is back


async def test_resume_decisions_recovered_trimmed_reset_and_hot_hits() -> None:
    source = MemorySource()
    ids = source.append("orders", b"1", b"2", b"3", b"4")
    hub = make_hub(source)
    topic = Topic("orders")  # detached from readers: every resume reads the source
    topic.hot.base = StreamId(2**62, 0)
    recovered = await decide(hub, topic, _cursor(str(ids[1])), 10)
    assert (recovered.recovered, [m.id for m in recovered.messages]) == (True, ids[2:])
    source.trim("orders", keep=2)
    trimmed = await decide(hub, topic, _cursor(str(ids[0])), 10)
    assert (trimmed.recovered, trimmed.reason) == (False, "trimmed")
    assert [m.id for m in trimmed.messages] == ids[2:]
    ahead = await decide(hub, topic, _cursor(f"{ids[-1].ms + 50}-0"), 10)
    assert (ahead.recovered, ahead.reason) == (False, "reset")
    assert [m.id for m in ahead.messages] == ids[2:]  # from the oldest retained
    # A live topic's hot window answers without the source.
    live = await hub.acquire("orders")
    sink = Recorder()
    hub.attach(live, sink).go_live()
    (fifth,) = source.append("orders", b"5")
    source.start(hub.dispatch, None)  # type: ignore[arg-type]  # the memory source takes no group
    source.read_live()
    source.down = True
    hot = await decide(hub, live, _cursor(str(ids[-1])), 10)
    assert (hot.recovered, [m.id for m in hot.messages]) == (True, [fifth])


async def test_catch_up_then_live_is_exact_across_the_seam() -> None:
    source = MemorySource()
    ids = source.append("orders", b"1", b"2", b"3")
    hub = make_hub(source)
    source.start(hub.dispatch, None)  # type: ignore[arg-type]  # the memory source takes no group
    topic = await hub.acquire("orders")
    sink = Recorder()
    feed = hub.attach(topic, sink)  # registered before history is read
    resume = await decide(hub, topic, _cursor(str(ids[0])), 1)
    # Published while the resume reads history: lands in the feed's buffer.
    more = source.append("orders", b"4", b"5")
    source.read_live()

    async def deliver(messages: list[Message]) -> None:
        for message in messages:  # what the transports do with a page of history
            feed.deliver(message)

    feed.resume_after(resume.after, check=resume.recovered)
    await catch_up(hub, feed, resume, deliver, page=1)
    # History page by page, then the buffer minus what history already gave: each id once.
    assert sink.events == [("message", str(i)) for i in [*ids[1:], *more]]
