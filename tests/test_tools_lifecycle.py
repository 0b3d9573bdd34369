"""The shared runtime seen through the tools process: shutdown, config errors, limits, metrics,
logs, traces and the Redis-backed cache."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2

from chatagent.v1 import tools_pb2, tools_pb2_grpc
from tests.support.fake_open_meteo import fake_open_meteo
from tests.support.otlp_receiver import otlp_receiver
from tests.support.ports import free_port
from tests.support.process import ROOT, ServiceProcess

SERVICE = "chatagent.v1.ToolService"


def wait_until(predicate: object, timeout: float = 10.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_sigterm_lets_the_slow_call_finish_refuses_new_ones_and_exits_zero() -> None:
    with fake_open_meteo() as upstream:
        upstream.delay_seconds = 2.0
        env = {"OPEN_METEO_FORECAST_URL": upstream.forecast_url, "WEATHER_TIMEOUT_SECONDS": "10"}
        with ServiceProcess("tools", env) as tools:
            tools.start(wait_for=SERVICE)
            assert tools.channel is not None
            stub = tools_pb2_grpc.ToolServiceStub(tools.channel)
            slow = stub.GetWeather.future(tools_pb2.GetWeatherRequest(place="Tokyo"), timeout=20)
            wait_until(lambda: upstream.calls("/v1/forecast"))

            tools.terminate()
            refusal: grpc.StatusCode | None = None
            refused_while_slow_call_ran = False
            deadline = time.monotonic() + 5
            while refusal is None and time.monotonic() < deadline:
                try:
                    stub.Calculate(tools_pb2.CalculateRequest(expression="1+1"), timeout=1)
                except grpc.RpcError as exc:
                    refusal = exc.code()
                    refused_while_slow_call_ran = not slow.done()
                time.sleep(0.02)
            # Refused, never run: UNAVAILABLE once the server has sent GOAWAY; CANCELLED for a
            # call that reached the transport in the instant before (gRPC core's own race).
            assert refusal in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
            assert refused_while_slow_call_ran

            assert slow.result().temperature_c == 12.3
            assert tools.wait(timeout=15) == 0
            assert any(r["message"] == "stopping" for r in tools.log_records())


def test_health_is_not_serving_until_redis_is_reachable(redis_url: str) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    with ServiceProcess("tools", {"REDIS_URL": dead_redis}) as tools:
        tools.start(wait_for=None)
        wait_until(lambda: "dependency not ready" in tools.logs(), timeout=20)
        assert tools.health(SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert tools.health("") == health_pb2.HealthCheckResponse.NOT_SERVING
    with ServiceProcess("tools", {"REDIS_URL": redis_url}) as tools:
        tools.start(wait_for=SERVICE)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "not-a-port"),
        ("METRICS_PORT", "70000"),
        ("LOG_LEVEL", "LOUD"),
        ("REDIS_URL", "http://example.invalid"),
        ("OPEN_METEO_FORECAST_URL", "ftp://x"),
        ("WEATHER_TIMEOUT_SECONDS", "-1"),
        ("DEFAULT_TIMEZONE", "Mars/Olympus"),
    ],
)
def test_bad_configuration_stops_the_process_naming_the_variable(variable: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.tools"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", variable: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert variable in result.stderr


def test_oversized_requests_are_refused() -> None:
    with ServiceProcess("tools", {"MAX_REQUEST_BYTES": "2048"}) as tools:
        tools.start(wait_for=SERVICE)
        assert tools.channel is not None
        stub = tools_pb2_grpc.ToolServiceStub(tools.channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Calculate(tools_pb2.CalculateRequest(expression="1+" * 2000 + "1"), timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Within the size limit but over the calculator's own: named, not truncated.
        with pytest.raises(grpc.RpcError) as info:
            stub.Calculate(tools_pb2.CalculateRequest(expression="1+" * 600 + "1"), timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "1000" in (info.value.details() or "").replace(",", "")


def test_metrics_count_calls_by_method_and_code_and_logs_keep_user_text_out() -> None:
    secret_expression = "31337 * 7"
    with ServiceProcess("tools") as tools:
        tools.start(wait_for=SERVICE)
        assert tools.channel is not None
        stub = tools_pb2_grpc.ToolServiceStub(tools.channel)
        for _ in range(3):
            stub.Calculate(tools_pb2.CalculateRequest(expression=secret_expression), timeout=5)
        with pytest.raises(grpc.RpcError):
            stub.GetTime(tools_pb2.GetTimeRequest(place="Secretplace Nowhere"), timeout=5)
        stub.Calculate.with_call(
            tools_pb2.CalculateRequest(expression="1"),
            metadata=[("x-request-id", "req-abc-123")],
            timeout=5,
        )

        url = f"http://127.0.0.1:{tools.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        labels = f'grpc_method="Calculate",grpc_service="{SERVICE}",grpc_type="unary"'
        assert f'grpc_server_handled_total{{grpc_code="OK",{labels}}} 4.0' in text
        assert (
            f'grpc_server_handled_total{{grpc_code="NOT_FOUND",grpc_method="GetTime",'
            f'grpc_service="{SERVICE}",grpc_type="unary"}} 1.0'
        ) in text
        assert f"grpc_server_handling_seconds_count{{{labels}}} 4.0" in text

        wait_until(lambda: "req-abc-123" in tools.logs())
        records = tools.log_records()
        finished = [r for r in records if r["message"] == "rpc finished"]
        assert {r["rpc"] for r in finished} >= {f"/{SERVICE}/Calculate", f"/{SERVICE}/GetTime"}
        assert all(r["request_id"] and r["trace_id"] for r in finished)
        assert any(r["request_id"] == "req-abc-123" for r in finished)
        assert "31337" not in tools.logs()
        assert "Secretplace" not in tools.logs()
        # What it loaded at start (the gazetteer) was frozen out of the garbage collector's
        # walks before it reported SERVING.
        messages = [r["message"] for r in records]
        frozen = messages.index("start-up objects frozen out of the garbage collector")
        assert frozen < messages.index("serving")
        assert records[frozen]["objects"] > 100_000


def test_spans_reach_the_otlp_receiver_and_the_trace_continues_upstream() -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    with otlp_receiver(free_port()) as receiver, fake_open_meteo() as upstream:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OPEN_METEO_FORECAST_URL": upstream.forecast_url,
        }
        with ServiceProcess("tools", env) as tools:
            tools.start(wait_for=SERVICE)
            assert tools.channel is not None
            stub = tools_pb2_grpc.ToolServiceStub(tools.channel)
            stub.GetWeather(
                tools_pb2.GetWeatherRequest(place="Tokyo"),
                metadata=[("traceparent", traceparent)],
                timeout=5,
            )
            spans = receiver.wait_for(
                lambda s: s.trace_id == trace_id and s.name == f"/{SERVICE}/GetWeather"
            )
            assert spans
            assert spans[0].service == "tools"
            assert spans[0].parent_span_id == "00f067aa0ba902b7"
            sent = upstream.calls("/v1/forecast")[0].headers
            assert sent["traceparent"].split("-")[1] == trace_id
            # Kubernetes probes every few seconds; their spans would drown the real ones.
            tools.health(SERVICE)
            assert tools.stop() == 0
        assert not [s for s in receiver.spans if "grpc.health" in s.name]


def test_weather_cache_in_redis_survives_a_restart(redis_url: str) -> None:
    with fake_open_meteo() as upstream:
        env = {"REDIS_URL": redis_url, "OPEN_METEO_FORECAST_URL": upstream.forecast_url}
        request = tools_pb2.GetWeatherRequest(place="Seoul", language="ko")
        for expected_cached in (False, True):
            with ServiceProcess("tools", env) as tools:
                tools.start(wait_for=SERVICE)
                assert tools.channel is not None
                reply = tools_pb2_grpc.ToolServiceStub(tools.channel).GetWeather(request, timeout=5)
                assert reply.from_cache is expected_cached
                assert reply.description == "약한 비"
        assert len(upstream.calls("/v1/forecast")) == 1


def test_concurrent_slow_calls_do_not_block_each_other() -> None:
    with fake_open_meteo() as upstream:
        upstream.delay_seconds = 1.0
        env = {"OPEN_METEO_FORECAST_URL": upstream.forecast_url}
        with ServiceProcess("tools", env) as tools:
            tools.start(wait_for=SERVICE)
            assert tools.channel is not None
            stub = tools_pb2_grpc.ToolServiceStub(tools.channel)
            places = ["Tokyo", "Seoul", "London", "Paris", "Berlin", "Madrid"]
            started = time.monotonic()
            futures = [
                stub.GetWeather.future(tools_pb2.GetWeatherRequest(place=p), timeout=10)
                for p in places
            ]
            results = [f.result() for f in futures]
            assert len(results) == len(places)
            # One after another this would take six seconds.
            assert time.monotonic() - started < 3.5
