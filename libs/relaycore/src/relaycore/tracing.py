"""OpenTelemetry: on only when ``RELAY_OTLP_ENDPOINT`` is set.

Ingest starts a span per publish and stores its W3C ``traceparent`` in the message headers; the
gateway's delivery span links to it, so one trace shows producer → Valkey → consumer.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, SpanContext, TraceFlags, Tracer

__all__ = ["Tracing", "link_from_traceparent", "traceparent_of"]


class Tracing:
    """A tracer provider for one service, or a no-op tracer when no endpoint is configured."""

    def __init__(self, service: str, endpoint: str) -> None:
        self.enabled = bool(endpoint)
        self.provider: TracerProvider | None = None
        if self.enabled:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.provider = TracerProvider(resource=Resource.create({"service.name": service}))
            self.provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))
            )
            self.tracer: Tracer = self.provider.get_tracer(service)
        else:
            self.tracer = trace.NoOpTracer()

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


def traceparent_of(span: trace.Span) -> str | None:
    """The W3C traceparent of ``span``, or ``None`` for a non-recording span."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def link_from_traceparent(value: str) -> Link | None:
    """A span link to the producer's span, from its ``traceparent`` header."""
    parts = value.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        context = SpanContext(
            trace_id=int(parts[1], 16),
            span_id=int(parts[2], 16),
            is_remote=True,
            trace_flags=TraceFlags(int(parts[3], 16)),
        )
    except ValueError:
        return None
    return Link(context) if context.is_valid else None
