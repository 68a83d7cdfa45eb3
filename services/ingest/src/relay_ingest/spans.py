"""One OpenTelemetry span per published message, its ``traceparent`` stored in the message.

The span is a child of the producer's own trace when the HTTP request carries a W3C
``traceparent`` header, and its id goes into the message headers (``traceparent``), so the
gateway's delivery span can link to it: one trace shows producer → ingest → Valkey → consumer.
With tracing off (no ``RELAY_OTLP_ENDPOINT``) none of this runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from relay_ingest.messages import encode_headers
from relay_ingest.publisher import OutgoingMessage, Published
from relaycore.models import PublishRequest
from relaycore.tracing import Tracing, traceparent_of

__all__ = ["PublishSpans"]

TRACEPARENT = "traceparent"


class PublishSpans:
    def __init__(self, tracing: Tracing) -> None:
        self.enabled = tracing.enabled
        self._tracer = tracing.tracer
        self._propagator = TraceContextTextMapPropagator()

    def start(
        self,
        request_headers: Mapping[str, str],
        items: Sequence[PublishRequest],
        messages: Sequence[OutgoingMessage],
    ) -> tuple[list[Span], list[OutgoingMessage]]:
        """A span per message, and the messages with each span's ``traceparent`` header."""
        parent = self._propagator.extract(request_headers)
        spans: list[Span] = []
        stamped: list[OutgoingMessage] = []
        for item, message in zip(items, messages, strict=True):
            span = self._tracer.start_span(
                "relay.publish",
                context=parent,
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "valkey",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": item.topic,
                },
            )
            spans.append(span)
            traceparent = traceparent_of(span)
            if traceparent is None:
                stamped.append(message)
                continue
            headers = encode_headers({**item.headers, TRACEPARENT: traceparent})
            stamped.append(dataclasses.replace(message, headers=headers))
        return spans, stamped

    @staticmethod
    def finish(
        spans: Sequence[Span],
        published: Sequence[Published] | None,
        error: BaseException | None = None,
    ) -> None:
        for index, span in enumerate(spans):
            if published is not None:
                span.set_attribute("messaging.message.id", published[index].id)
                span.set_attribute("relay.duplicate", published[index].duplicate)
            elif error is not None:
                span.set_status(Status(StatusCode.ERROR, str(error)))
            span.end()
