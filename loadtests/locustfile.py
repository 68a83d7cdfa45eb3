"""Locust load test for Pulsar Relay: producers, WebSocket consumers and long-poll consumers.

Run it against any relay (``make loadtest`` starts its own stack and runs this headless)::

    LOADTEST_INGEST_URL=http://127.0.0.1:8080 LOADTEST_GATEWAY_URL=http://127.0.0.1:8081 \
        uv run locust -f loadtests/locustfile.py --headless -u 40 -r 20 -t 60s

Users (weights in brackets):

- ``SingleProducer`` (3): ``POST /api/v1/messages``, one message per request.
- ``BatchProducer`` (1): ``POST /api/v1/messages/batch`` with ``LOADTEST_BATCH`` messages.
- ``WebSocketConsumer`` (4): one WebSocket, subscribed to every topic.
- ``LongPollConsumer`` (2): a ``GET /api/v1/poll`` loop per topic, cursor from ``next``.

Every payload carries the publisher's send time (``bench_t``, µs since the epoch), and each
consumer reports, per received message, a locust request event of type ``E2E`` whose response
time is receive time minus publish time (ms). So locust's table shows end-to-end latency
percentiles next to the HTTP figures, with failures for gaps, errors and closes.

Environment: ``LOADTEST_INGEST_URL``, ``LOADTEST_GATEWAY_URL``, ``LOADTEST_TOPICS`` (number of
topics, default 4), ``LOADTEST_RATE`` (requests/s per producer, default 20),
``LOADTEST_BATCH`` (messages per batch, default 50), ``LOADTEST_TOKEN`` (bearer token when the
relay runs with ``RELAY_AUTH=jwt``).
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any
from urllib.parse import quote, urlsplit

import websocket
from locust import FastHttpUser, User, between, constant_throughput, task
from locust.env import Environment

INGEST_URL = os.environ.get("LOADTEST_INGEST_URL", "http://127.0.0.1:8080")
GATEWAY_URL = os.environ.get("LOADTEST_GATEWAY_URL", "http://127.0.0.1:8081")
TOPICS = [f"loadtest.{i}" for i in range(int(os.environ.get("LOADTEST_TOPICS", "4")))]
RATE = float(os.environ.get("LOADTEST_RATE", "20"))
BATCH = int(os.environ.get("LOADTEST_BATCH", "50"))
TOKEN = os.environ.get("LOADTEST_TOKEN", "")
AUTH = {"Authorization": f"Bearer {TOKEN}"} if TOKEN else {}
PAD = "x" * 48


def _message(topic: str) -> dict[str, Any]:
    return {"topic": topic, "payload": {"bench_t": time.time_ns() // 1000, "pad": PAD}}


def _report_delivery(
    environment: Environment, transport: str, envelope: dict[str, Any], size: int
) -> None:
    """One locust event per delivered message: response_time = end-to-end latency in ms."""
    payload = envelope.get("payload")
    if not isinstance(payload, dict) or "bench_t" not in payload:
        return  # a message some other producer published
    latency_ms = (time.time_ns() // 1000 - int(payload["bench_t"])) / 1000
    environment.events.request.fire(  # type: ignore[no-untyped-call]  # locust's EventHook.fire is unannotated
        request_type="E2E",
        name=transport,
        response_time=latency_ms,
        response_length=size,
        exception=None,
        context={},
    )


def _report_failure(environment: Environment, transport: str, reason: str) -> None:
    environment.events.request.fire(  # type: ignore[no-untyped-call]  # locust's EventHook.fire is unannotated
        request_type="E2E",
        name=transport,
        response_time=0,
        response_length=0,
        exception=RuntimeError(reason),
        context={},
    )


class SingleProducer(FastHttpUser):
    """Publishes one message per request at ``LOADTEST_RATE`` requests/s."""

    host = INGEST_URL
    weight = 3
    wait_time = constant_throughput(RATE)

    @task
    def publish(self) -> None:
        body = _message(random.choice(TOPICS))
        with self.client.post(
            "/api/v1/messages", json=body, headers=AUTH, name="publish", catch_response=True
        ) as response:
            if response.status_code != 201:
                response.failure(f"{response.status_code}: {response.text[:200]}")


class BatchProducer(FastHttpUser):
    """Publishes ``LOADTEST_BATCH`` messages per request, spread over the topics."""

    host = INGEST_URL
    weight = 1
    wait_time = constant_throughput(RATE / 10)

    @task
    def publish_batch(self) -> None:
        body = {"messages": [_message(TOPICS[i % len(TOPICS)]) for i in range(BATCH)]}
        with self.client.post(
            "/api/v1/messages/batch",
            json=body,
            headers=AUTH,
            name=f"publish batch ({BATCH})",
            catch_response=True,
        ) as response:
            if response.status_code != 201:
                response.failure(f"{response.status_code}: {response.text[:200]}")


class WebSocketConsumer(User):
    """One WebSocket subscribed to every topic; reports each delivery's end-to-end latency."""

    host = GATEWAY_URL
    weight = 4
    wait_time = between(0, 0)

    def on_start(self) -> None:
        url = urlsplit(self.host)
        scheme = "wss" if url.scheme == "https" else "ws"
        started = time.perf_counter()
        self.ws = websocket.create_connection(
            f"{scheme}://{url.netloc}/api/v1/ws",
            header=[f"{k}: {v}" for k, v in AUTH.items()],
            timeout=30,
        )
        for req, topic in enumerate(TOPICS):
            self.ws.send(json.dumps({"op": "subscribe", "topic": topic, "req": req}))
        self.environment.events.request.fire(
            request_type="WS",
            name="connect+subscribe",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=None,
            context={},
        )
        self.last_ids: dict[str, str] = {}

    def on_stop(self) -> None:
        self.ws.close()

    @task
    def receive(self) -> None:
        try:
            frame = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return
        except (websocket.WebSocketException, OSError) as exc:
            _report_failure(self.environment, "websocket", f"connection lost: {exc}")
            self.on_start()
            return
        if not frame:
            return
        # The gateway may pack several events into one frame, separated by newlines.
        for line in frame.splitlines() if isinstance(frame, str) else []:
            event = json.loads(line)
            op = event.get("op")
            if op == "message":
                _report_delivery(self.environment, "websocket", event, len(line))
            elif op in ("gap", "error"):
                _report_failure(self.environment, "websocket", f"{op}: {line[:200]}")


class LongPollConsumer(FastHttpUser):
    """A long-poll loop on one topic; reports each delivery's end-to-end latency."""

    host = GATEWAY_URL
    weight = 2
    wait_time = between(0, 0)

    def on_start(self) -> None:
        self.topic = random.choice(TOPICS)
        self.since: str | None = None

    @task
    def poll(self) -> None:
        query = f"topic={quote(self.topic)}&timeout=20&limit=1000"
        if self.since is not None:
            query += f"&since={quote(self.since)}"
        with self.client.get(
            f"/api/v1/poll?{query}", headers=AUTH, name="poll", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
            answer = response.json()
            if self.since is not None and answer.get("recovered") is False:
                _report_failure(self.environment, "longpoll", "recovered: false (gap)")
            for envelope in answer.get("messages", []):
                _report_delivery(self.environment, "longpoll", envelope, 0)
            self.since = answer.get("next", self.since)
