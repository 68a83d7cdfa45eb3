"""``Subscription``: one topic over WebSocket, SSE or long-poll, resumed across reconnects.

The iterator keeps one cursor: the id of the last message it yielded (or, before the first one,
the stream's end when the subscription started). Every (re)connection asks the gateway for what
follows that cursor, so a restart, a reset connection or a network error costs a reconnect and
nothing else. Messages at or before the cursor are dropped (a guard against any replay at the
seam), except right after a gap, where the stream itself moved (a reset stream restarts lower).

The gateway reports a gap three ways, all turned into one :class:`Gap` item before the message
it names: a ``gap`` event (WebSocket live, SSE), ``recovered: false`` on ``subscribed`` (the
WebSocket resume) and ``recovered: false`` on a long-poll answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncGenerator
from types import TracebackType
from typing import Any, Literal, Protocol

import httpx
import msgspec
import websockets
from httpx_sse import SSEError, aconnect_sse

from relay_client.errors import (
    AuthenticationError,
    InvalidRequestError,
    PermissionDeniedError,
    ProtocolError,
    RelayError,
    UnavailableError,
    error_from_event,
    error_from_response,
    retry_after_seconds,
)
from relay_client.models import Gap, Message, id_key
from relay_client.retry import RetryPolicy


class Connections(Protocol):
    """What a subscription uses of its :class:`~relay_client.client.RelayClient` (a protocol,
    so this module does not import the client that imports it)."""

    gateway_url: str
    token: str | None
    http: httpx.AsyncClient
    subscribe_retry: RetryPolicy


__all__ = ["Item", "Subscription", "Transport", "check_topic"]

log = logging.getLogger("relay_client")

Transport = Literal["ws", "sse", "poll"]
Item = Message | Gap
State = Literal["connecting", "live", "reconnecting", "closed"]

TOPIC_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")
# Long-poll wait per request (the gateway's default; its maximum is 55 s).
POLL_TIMEOUT = 25.0
POLL_LIMIT = 1000
# The gateway sends an SSE comment at least every 15 s: three missed ones mean a dead stream.
SSE_READ_TIMEOUT = 45.0
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Close codes that reconnecting cannot fix; every other close (1012 restart, 1011, 1006,
# 4008 slow consumer: resuming is the cure) is followed by a reconnect.
_FATAL_CLOSES: dict[int, tuple[type[RelayError], str]] = {
    4401: (AuthenticationError, "unauthorized"),
    4403: (PermissionDeniedError, "forbidden"),
    4400: (ProtocolError, "protocol_violation"),
    1009: (ProtocolError, "too_large"),
}


def check_topic(topic: str) -> None:
    if not isinstance(topic, str) or TOPIC_PATTERN.match(topic) is None:
        raise InvalidRequestError(
            f"invalid topic {topic!r}: must match {TOPIC_PATTERN.pattern}", code="invalid_topic"
        )


class _Reconnect(Exception):
    """A transient failure: wait (at least ``retry_after``) and reconnect from the cursor."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _WsEvent(msgspec.Struct):
    op: str
    topic: str = ""
    id: str = ""
    ts: int = 0
    payload: Any = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    reason: str = ""
    from_: str = msgspec.field(default="", name="from")
    last_id: str | None = None
    recovered: bool | None = None
    code: str = ""
    message: str = ""


class _GapEvent(msgspec.Struct):
    topic: str
    reason: str
    from_: str = msgspec.field(name="from")


class _PollAnswer(msgspec.Struct):
    topic: str
    messages: list[Message]
    next: str
    recovered: bool = True


_ws_event = msgspec.json.Decoder(_WsEvent)
# How the gateway starts a message event; any other spelling takes the general path.
_MESSAGE_PREFIX = '{"op":"message",'
_envelope = msgspec.json.Decoder(Message)
_gap = msgspec.json.Decoder(_GapEvent)
_poll = msgspec.json.Decoder(_PollAnswer)


class Subscription:
    """Async iterator of :class:`Message` / :class:`Gap`; see ``RelayClient.subscribe``.

    ``cursor`` is where a reconnect resumes (the last id yielded); ``state`` is
    ``connecting``, ``live``, ``reconnecting`` or ``closed``; ``reconnects`` counts reconnects.
    """

    def __init__(
        self,
        client: Connections,
        topic: str,
        since: str | int | None,
        transport: Transport | str,
    ) -> None:
        check_topic(topic)
        if transport not in ("ws", "sse", "poll"):
            raise ValueError(f"transport must be 'ws', 'sse' or 'poll', not {transport!r}")
        self.client = client
        self.topic = topic
        self.transport: Transport = transport
        # A bare millisecond timestamp may come as an int; every cursor is a string on the wire.
        self.cursor: str | None = None if since is None else str(since)
        self.state: State = "connecting"
        self.reconnects = 0
        # The cursor a not-recovered resume started from, until the first message after it.
        self._gap_from_cursor: str | None = None
        self._after_gap = False
        self._attempt = 0
        # When the current run of failed (re)connections began; None while connected.
        self._failing_since: float | None = None
        self._iterator = self._run()

    # -- iterator protocol --------------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Item:
        return await self._iterator.__anext__()

    async def aclose(self) -> None:
        self.state = "closed"
        await self._iterator.aclose()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the resume loop ----------------------------------------------------------------------

    async def _run(self) -> AsyncGenerator[Item, None]:
        policy = self.client.subscribe_retry
        # The cursor's sort key, recomputed only when a session moved the cursor itself.
        last_cursor: str | None = None
        last_key = (-1, -1)
        sessions = {"ws": self._websocket, "sse": self._sse, "poll": self._long_poll}
        while True:
            try:
                # aclosing: stopping the iteration closes the session's connection now.
                async with contextlib.aclosing(sessions[self.transport]()) as session:
                    async for item in session:
                        if isinstance(item, Gap):
                            self._gap_from_cursor = None
                            self._after_gap = True
                            yield item
                            continue
                        if self._gap_from_cursor is not None:
                            # A resume the gateway could not recover: say so before the message.
                            cursor = self._gap_from_cursor
                            self._gap_from_cursor = None
                            reason = "reset" if id_key(item.id) <= id_key(cursor) else "trimmed"
                            self._after_gap = True
                            yield Gap(topic=self.topic, reason=reason, from_id=item.id)
                        key = id_key(item.id)
                        if not self._after_gap and self.cursor is not None:
                            if self.cursor is not last_cursor:  # set by a (re)connection
                                last_cursor, last_key = self.cursor, id_key(self.cursor)
                            if key <= last_key:
                                continue  # already yielded before a reconnect
                        self._after_gap = False
                        self.cursor = last_cursor = item.id
                        last_key = key
                        yield item
                raise _Reconnect("the gateway ended the stream")
            except _Reconnect as reconnect:
                now = time.monotonic()
                if self._failing_since is None:
                    self._failing_since = now
                delay = policy.delay(self._attempt, reconnect.retry_after)
                failing_for = now - self._failing_since
                if policy.deadline is not None and failing_for + delay > policy.deadline:
                    raise UnavailableError(
                        f"gave up reconnecting to {self.client.gateway_url}: {reconnect}"
                    ) from None
                self._attempt += 1
                self.reconnects += 1
                self.state = "reconnecting"
                log.info("relay subscribe %s: %s; reconnecting in %.2fs",
                         self.topic, reconnect, delay)  # fmt: skip
                await asyncio.sleep(delay)

    def _established(self) -> None:
        self.state = "live"
        self._attempt = 0
        self._failing_since = None

    def _resumed(self, recovered: bool | None, cursor: str | None) -> None:
        if recovered is False and cursor is not None:
            self._gap_from_cursor = cursor

    # -- transports ---------------------------------------------------------------------------

    async def _websocket(self) -> AsyncGenerator[Item, None]:
        url = re.sub(r"^http", "ws", self.client.gateway_url) + "/api/v1/ws"
        token = self.client.token
        headers = {"authorization": f"Bearer {token}"} if token else None
        frame: dict[str, Any] = {"op": "subscribe", "topic": self.topic, "req": 1}
        sent_cursor = self.cursor
        if sent_cursor is not None:
            frame["since"] = sent_cursor
        try:
            async with websockets.connect(
                url,
                additional_headers=headers,
                compression=None,
                open_timeout=10,
                # A dead peer must not hold a reconnect for websockets' default 10 s.
                close_timeout=2,
                max_size=None,
                max_queue=64,
            ) as ws:
                await ws.send(msgspec.json.encode(frame).decode())
                async for raw in ws:
                    text = raw if isinstance(raw, str) else raw.decode()
                    for line in text.split("\n"):
                        if line.startswith(_MESSAGE_PREFIX):
                            # The hot path: straight into a Message ("op" is ignored).
                            yield _envelope.decode(line)
                            continue
                        event = _ws_event.decode(line)
                        op = event.op
                        if op == "message":
                            yield Message(
                                topic=event.topic, id=event.id, ts=event.ts,
                                payload=event.payload, headers=event.headers,
                            )  # fmt: skip
                        elif op == "gap":
                            yield Gap(topic=event.topic, reason=event.reason, from_id=event.from_)
                        elif op == "subscribed":
                            self._established()
                            if sent_cursor is None:
                                # Live from here: a reconnect resumes after this point.
                                self.cursor = event.last_id or "0-0"
                            self._resumed(event.recovered, sent_cursor)
                        elif op == "error":
                            error = error_from_event(event.code, event.message)
                            if isinstance(error, UnavailableError) or event.code in (
                                "slow_consumer", "draining",
                            ):  # fmt: skip
                                raise _Reconnect(f"gateway error {event.code}: {event.message}")
                            raise error
                        elif op == "unsubscribed":
                            raise _Reconnect("the gateway ended the subscription")
                code = ws.close_code
        except websockets.ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
        except websockets.InvalidStatus as refused:
            status = refused.response.status_code
            if status == 401:
                raise AuthenticationError("the gateway refused the token", status=401) from None
            # 403 before the upgrade: the gateway is draining (or, for browsers, the origin).
            raise _Reconnect(f"handshake refused with {status}") from None
        except (OSError, TimeoutError, websockets.InvalidHandshake) as error:
            raise _Reconnect(f"cannot connect: {error!r}") from None
        except msgspec.DecodeError as error:
            raise ProtocolError(f"undecodable WebSocket event: {error}") from None
        fatal = _FATAL_CLOSES.get(code or 0)
        if fatal is not None:
            cls, slug = fatal
            raise cls(f"the gateway closed the WebSocket with {code}", code=slug)
        raise _Reconnect(f"closed with {code}")

    async def _anchor(self) -> None:
        """Without ``since``: start from the stream's end now, so a reconnect loses nothing."""
        if self.cursor is not None:
            return
        params = {"topic": self.topic, "timeout": "0"}
        answer = _poll.decode(await self._get_json("/api/v1/poll", params, 10.0))
        self.cursor = answer.next

    async def _get_json(self, path: str, params: dict[str, str], read_timeout: float) -> bytes:
        try:
            response = await self.client.http.get(
                self.client.gateway_url + path,
                params=params,
                timeout=httpx.Timeout(10.0, read=read_timeout),
            )
        except httpx.TransportError as error:
            raise _Reconnect(f"cannot reach the gateway: {error!r}") from None
        self._check_status(response)
        return response.content

    def _check_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if status == 200:
            return
        if status in _RETRY_STATUSES or status >= 500:
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
            raise _Reconnect(f"gateway answered {status}", retry_after)
        raise error_from_response(status, response.content, dict(response.headers))

    async def _long_poll(self) -> AsyncGenerator[Item, None]:
        if self.cursor is None:
            await self._anchor()
            # The gateway answered: the first long-poll is now waiting on live messages.
            self._established()
        while True:
            cursor = self.cursor
            assert cursor is not None  # anchored above
            params = {"topic": self.topic, "since": cursor, "timeout": f"{POLL_TIMEOUT:g}",
                      "limit": str(POLL_LIMIT)}  # fmt: skip
            try:
                answer = _poll.decode(
                    await self._get_json("/api/v1/poll", params, POLL_TIMEOUT + 15.0)
                )
            except msgspec.DecodeError as error:
                raise ProtocolError(f"undecodable long-poll answer: {error}") from None
            self._established()
            self._resumed(answer.recovered, cursor)
            for message in answer.messages:
                yield message
            if not answer.messages:
                self.cursor = answer.next

    async def _sse(self) -> AsyncGenerator[Item, None]:
        await self._anchor()
        params = {"topic": self.topic}
        if self.cursor is not None:
            params["since"] = self.cursor
        try:
            async with aconnect_sse(
                self.client.http,
                "GET",
                self.client.gateway_url + "/api/v1/sse",
                params=params,
                timeout=httpx.Timeout(10.0, read=SSE_READ_TIMEOUT),
            ) as source:
                response = source.response
                if response.status_code != 200:
                    await response.aread()
                    self._check_status(response)
                self._established()
                async for event in source.aiter_sse():
                    if event.event == "message":
                        yield _envelope.decode(event.data)
                    elif event.event == "gap":
                        gap = _gap.decode(event.data)
                        yield Gap(topic=gap.topic, reason=gap.reason, from_id=gap.from_)
        except httpx.TransportError as error:
            raise _Reconnect(f"SSE stream broke: {error!r}") from None
        except (msgspec.DecodeError, SSEError) as error:
            raise ProtocolError(f"not a relay SSE stream: {error}") from None
