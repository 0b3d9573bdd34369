"""A local stand-in for Open-Meteo's geocoding and forecast APIs, steerable per test."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

FORECAST: dict[str, Any] = {
    "latitude": 35.7,
    "longitude": 139.69,
    "timezone": "Asia/Tokyo",
    "utc_offset_seconds": 32400,
    "current": {
        "time": "2026-11-26T09:30",
        "interval": 900,
        "temperature_2m": 12.3,
        "apparent_temperature": 10.1,
        "relative_humidity_2m": 55,
        "wind_speed_10m": 7.2,
        "weather_code": 61,
    },
    "daily": {
        "time": ["2026-11-26"],
        "temperature_2m_max": [15.2],
        "temperature_2m_min": [8.4],
        "precipitation_probability_max": [80],
    },
}

GEOCODE: dict[str, Any] = {
    "results": [
        {
            "name": "Atlantis Bay",
            "latitude": 10.5,
            "longitude": -20.25,
            "country_code": "XA",
            "timezone": "Atlantic/Azores",
            "population": 1000,
        }
    ]
}


@dataclass
class Request:
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass
class FakeOpenMeteo:
    base_url: str = ""
    status: int = 200
    delay_seconds: float = 0.0
    forecast: dict[str, Any] = field(default_factory=lambda: json.loads(json.dumps(FORECAST)))
    geocode: dict[str, Any] = field(default_factory=lambda: json.loads(json.dumps(GEOCODE)))
    requests: list[Request] = field(default_factory=list)
    # Set to release requests that are being held (a hung upstream), so the server can stop.
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def forecast_url(self) -> str:
        return self.base_url + "/v1/forecast"

    @property
    def geocoding_url(self) -> str:
        return self.base_url + "/v1/search"

    def calls(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]


@contextmanager
def fake_open_meteo() -> Iterator[FakeOpenMeteo]:
    state = FakeOpenMeteo()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            state.requests.append(Request(url.path, query, dict(self.headers.items())))
            if state.delay_seconds:
                state.release.wait(state.delay_seconds)
            if url.path == "/v1/forecast":
                body = state.forecast
            elif url.path == "/v1/search":
                body = state.geocode
            else:
                self.send_error(404)
                return
            payload = json.dumps(body).encode() if state.status == 200 else b'{"error":true}'
            self.send_response(state.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
