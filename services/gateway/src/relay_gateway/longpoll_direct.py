"""Long-polls answered inside the server's protocol, without an ASGI call (``relay.direct``).

A poll loop's request finds, almost always, either its answer in the hot window (it arrived
after the next message) or nothing yet (it is caught up and parks until the next message,
whose prepared answer the fan-out writes straight to its socket). Both are a few lookups of
work, and through ASGI each paid for a task, the middleware and routing chain, a future and
its wake-up — most of the gateway's CPU per delivered message, three times nchan's
(``loadtests/RESULTS.md``, performance round 2). :func:`direct_polls` is the gateway's
:data:`relaycore.direct.DirectHandler`: it answers those two cases synchronously, and parks a
caught-up poll as a :class:`DirectPoll` — a sink with a timer, answered by a callback — with
the same bytes, cursors, metrics, drain and disconnect handling as :func:`poll_endpoint`.

Everything else it declines, unanswered, to the ASGI endpoint: browser requests (``Origin``:
CORS), invalid or history-only (``timeout=0``) queries, missing or refused credentials (the
endpoint writes the 401/403), topics no reader feeds yet, cursors outside the hot window, a
gateway that is draining. Under a server without ``relay.direct`` the endpoint serves all.
"""

from __future__ import annotations

import asyncio

from relay_gateway.hot import Message
from relay_gateway.hub import Feed, Topic
from relay_gateway.longpoll import (
    POLL_PATH,
    PollSink,
    answer_body,
    answer_headers,
    has_origin,
    poll_query,
    prepared_answer,
)
from relay_gateway.params import parse_query
from relay_gateway.recovery import decide_hot
from relay_gateway.state import GatewayState
from relaycore.auth import AuthError, bearer_token
from relaycore.direct import DirectHandler, DirectRequest
from relaycore.http import ApiError
from relaycore.ids import StreamId

__all__ = ["DirectPoll", "direct_polls"]


def _authorized(state: GatewayState, request: DirectRequest, topic: str) -> bool:
    """Whether the request's credentials permit ``topic`` (the endpoint answers when not)."""
    authorization = None
    for name, value in request.headers:
        if name == b"authorization":
            authorization = value.decode("latin-1")
            break
    token = bearer_token(authorization) or parse_query(request.query_string).get("token")
    try:
        principal = state.auth.authenticate(token)
    except AuthError:
        return False
    return principal.may_subscribe(topic)


def _answer(
    state: GatewayState,
    request: DirectRequest,
    topic: Topic,
    messages: list[Message],
    next_cursor: str,
    recovered: bool,
) -> None:
    """Answer with ``messages``: the topic's shared prepared bytes when they fit the request."""
    metrics = state.metrics.transport("poll")
    if messages:
        metrics.written(len(messages), messages[0].ts)
        if recovered and request.write_prepared(prepared_answer(topic, messages)):
            state.metrics.poll_shared_answers.inc()
            return
        next_cursor = str(messages[-1].id)
    body = answer_body(topic.json, messages, next_cursor, recovered)
    request.respond(200, answer_headers(body), body)


class DirectPoll(PollSink):
    """A caught-up poll parked in the hub, answered by a callback instead of a woken task."""

    __slots__ = ("done", "feed", "next_cursor", "request", "scheduled", "state", "timer")

    def __init__(
        self,
        state: GatewayState,
        topic: Topic,
        request: DirectRequest,
        limit: int,
        next_cursor: str,
    ) -> None:
        super().__init__(limit, topic, request, state.metrics.transport("poll"))
        self.state = state
        self.request = request
        self.next_cursor = next_cursor
        self.recovered = True
        self.feed: Feed | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.scheduled = False
        self.done = False

    def park(self, after: StreamId | None, timeout: float) -> None:
        """Register with the hub (delivering what follows ``after``; ``None``: what follows the
        topic's position, unchecked) and the drain; answer after ``timeout`` at the latest."""
        state = self.state
        assert self.topic is not None
        self.feed = feed = state.hub.attach(self.topic, self)
        if after is not None:
            feed.resume_after(after, check=True)
        assert self.metrics is not None
        self.metrics.open += 1
        state.drain.streams.add(self)
        self.request.on_disconnect = self.gone
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(timeout, self.finish)
        feed.go_live()

    def _wake(self) -> None:
        # Later in this iteration's callbacks: the fan-out that woke it is still iterating
        # the topic's feeds (detaching now would change that set), and more of the same
        # dispatch may still arrive.
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.finish)

    def gone(self) -> None:
        """The peer closed the connection first: nothing to answer, only to leave the hub."""
        self.answered = True
        self.finish()

    def finish(self) -> None:
        """Answer what was collected (unless the fan-out already did, or the peer is gone),
        then leave the hub, once: on a message, the timeout, a drain, or a disconnect."""
        if self.done:
            return
        self.done = True
        state = self.state
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        state.drain.streams.discard(self)
        assert self.metrics is not None
        self.metrics.open -= 1
        if self.feed is not None:
            state.hub.detach(self.feed)
            self.feed = None
        self.request.on_disconnect = None
        if not self.answered:
            assert self.topic is not None
            _answer(
                state,
                self.request,
                self.topic,
                self.messages,
                self.next_cursor,
                not self.gapped,
            )


def direct_polls(state: GatewayState) -> DirectHandler:
    """The gateway's direct handler: the long-polls it can answer without an ASGI call."""
    hub = state.hub

    def handle(request: DirectRequest) -> bool:
        if (
            request.method != "GET"
            or request.path != request.root_path + POLL_PATH
            or state.drain.draining
            or has_origin(request.headers)
        ):
            return False
        try:
            name, since, cursor, timeout, limit = poll_query(request.query_string)
        except ApiError:
            return False  # the endpoint answers the 422
        if timeout == 0 or (state.auth.enabled and not _authorized(state, request, name)):
            return False
        topic = hub.acquire_now(name)
        if topic is None:
            return False  # the endpoint starts the topic's reader
        after = None
        if cursor is None:
            # Only what is published from now on: the answer's cursor is the stream's end.
            next_cursor = str(topic.position)
        else:
            resume = decide_hot(hub, topic, cursor, limit)
            if resume is None:
                hub.release(topic)
                return False  # the endpoint reads the stream source
            if resume.messages:
                # Behind, inside the hot window: the answer is complete now.
                hub.release(topic)
                _answer(state, request, topic, resume.messages, "", True)
                return True
            # A bare-timestamp cursor stays valid as is.
            next_cursor = since if since is not None else str(resume.after)
            after = resume.after
        DirectPoll(state, topic, request, limit, next_cursor).park(after, timeout)
        return True

    return handle
