"""The process's tracer provider: spans are recorded only while something takes them, yet every
span, recorded or not, carries a trace id (answers and logs quote it) and passes it on."""

from __future__ import annotations

from opentelemetry import context, trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.common.tracing import make_provider

PROPAGATOR = TraceContextTextMapPropagator()


def sampled_flag(span: trace.Span) -> bool:
    """The W3C sampled flag a callee is sent with `span` as its parent."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return bool(int(carrier["traceparent"].rsplit("-", 1)[1], 16) & 0x01)


def test_without_an_exporter_spans_cost_nothing_but_keep_their_trace_ids() -> None:
    tracer = make_provider("test", "").get_tracer("test")
    with tracer.start_as_current_span("turn") as span:
        assert not span.is_recording()
        trace_id = span.get_span_context().trace_id
        assert trace_id != 0
        with tracer.start_as_current_span("child") as child:
            assert child.get_span_context().trace_id == trace_id  # one trace, still
        # The callee hears the trace id, and that this one was not sampled.
        assert sampled_flag(span) is False


def test_spans_are_recorded_once_a_processor_takes_them() -> None:
    provider = make_provider("test", "")
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[attr-defined]
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("turn") as span:
        assert span.is_recording()
        assert sampled_flag(span) is True
    assert [s.name for s in exporter.get_finished_spans()] == ["turn"]


def test_the_callers_sampling_decision_is_followed() -> None:
    provider = make_provider("test", "")
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[attr-defined]
    tracer = provider.get_tracer("test")
    for flags, recorded in ((TraceFlags.DEFAULT, False), (TraceFlags.SAMPLED, True)):
        remote = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(flags))
        parent = trace.set_span_in_context(NonRecordingSpan(remote))
        token = context.attach(parent)
        try:
            with tracer.start_as_current_span("server") as span:
                assert span.is_recording() is recorded
                assert span.get_span_context().trace_id == 0x1234
        finally:
            context.detach(token)
    assert [s.context.trace_id for s in exporter.get_finished_spans()] == [0x1234]
