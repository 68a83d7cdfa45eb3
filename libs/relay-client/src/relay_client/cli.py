"""``relay``: publish, tail and inspect topics from a shell (contract §10).

``relay publish TOPIC [JSON]`` · ``relay tail TOPIC [--since C] [--count N] [--transport T]
[--json]`` · ``relay info TOPIC``. URLs and token come from ``--ingest``/``--gateway``/``--token``
or ``RELAY_INGEST_URL``/``RELAY_GATEWAY_URL``/``RELAY_TOKEN``.

Output: rich formatting when standard output is a terminal, plain lines (or ``--json``) when it
is piped. Exit status: 0 success (also after Ctrl-C, which is how a tail ends), 1 a failure
with one line on standard error, 2 a usage error (click's).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn, TextIO

import click
import httpx
from rich.console import Console
from rich.table import Table

from relay_client.client import DEFAULT_GATEWAY_URL, DEFAULT_INGEST_URL, RelayClient
from relay_client.errors import RelayError
from relay_client.models import Gap, Message
from relay_client.retry import RetryPolicy

__all__ = ["cli", "main"]

# How long ``tail`` keeps reconnecting once it has been connected (a gateway restart takes
# seconds); the first connection fails at once instead, so a wrong URL is reported quickly.
TAIL_RECONNECT_FOR = 120.0
# Longest line ``relay publish`` reads from a pipe (ingest's default body limit is 1 MiB).
STDIN_LINE_LIMIT = 2 * 1024 * 1024


@dataclass(frozen=True)
class Options:
    ingest: str
    gateway: str
    token: str | None


def _fail(message: str) -> NoReturn:
    click.echo(f"relay: {message}", err=True)
    sys.exit(1)


def _run(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a command; failures become one stderr line and exit 1, Ctrl-C/SIGTERM exit 0."""

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        await coroutine

    try:
        asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass  # Ctrl-C / SIGTERM: what was printed so far stands
    except RelayError as error:
        _fail(str(error))
    except BrokenPipeError:
        # The reader went away (``relay tail t | head``): stop quietly, like coreutils; point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError as error:
        _fail(f"{type(error).__name__}: {error}")


async def _probe(client: RelayClient, url: str, service: str) -> None:
    """One quick request, so an unreachable service is reported now instead of after retries."""
    try:
        await client.http.get(url + "/health", timeout=5.0)
    except httpx.TransportError as error:
        _fail(f"cannot reach {service} at {url}: {type(error).__name__}")


def _stdout_console() -> Console | None:
    return Console(highlight=False) if sys.stdout.isatty() else None


def _emit(line: str, stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    out.write(line + "\n")
    out.flush()


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        _fail(f"invalid JSON {where}: {error}")


def _headers(pairs: tuple[str, ...]) -> dict[str, str] | None:
    headers: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--header")
        headers[name] = value
    return headers or None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--ingest",
    envvar="RELAY_INGEST_URL",
    default=DEFAULT_INGEST_URL,
    show_default=True,
    help="Ingest URL (env RELAY_INGEST_URL).",
)
@click.option(
    "--gateway",
    envvar="RELAY_GATEWAY_URL",
    default=DEFAULT_GATEWAY_URL,
    show_default=True,
    help="Gateway URL (env RELAY_GATEWAY_URL).",
)
@click.option(
    "--token",
    envvar="RELAY_TOKEN",
    default=None,
    help="JWT sent as Authorization: Bearer (env RELAY_TOKEN).",
)
@click.pass_context
def cli(ctx: click.Context, ingest: str, gateway: str, token: str | None) -> None:
    """Pulsar Relay command line: publish, tail and inspect topics."""
    ctx.obj = Options(ingest=ingest, gateway=gateway, token=token or None)


async def _stdin_lines() -> AsyncIterator[tuple[int, str]]:
    """Non-empty lines of standard input with their numbers, read without blocking the loop
    (so Ctrl-C stops ``relay publish`` at once even while it waits for the next line)."""
    number = 0
    if stat.S_ISREG(os.fstat(sys.stdin.fileno()).st_mode):
        for line in sys.stdin:  # a regular file: reads never wait
            number += 1
            if line.strip():
                yield number, line
        return
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STDIN_LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        try:
            raw = await reader.readline()
        except ValueError:  # asyncio's LimitOverrunError surfaces as ValueError here
            _fail(f"an input line is longer than {STDIN_LINE_LIMIT} bytes")
        if not raw:
            return
        number += 1
        text = raw.decode()
        if text.strip():
            yield number, text


@cli.command()
@click.argument("topic")
@click.argument("payload", required=False)
@click.option("--key", help="Idempotency key (only with a JSON argument: one message).")
@click.option(
    "--header",
    "-H",
    "header",
    multiple=True,
    metavar="NAME=VALUE",
    help="A message header; repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print each answer as a JSON object.")
@click.pass_obj
def publish(
    options: Options,
    topic: str,
    payload: str | None,
    key: str | None,
    header: tuple[str, ...],
    as_json: bool,
) -> None:
    """Publish PAYLOAD (JSON) to TOPIC, or one message per line of standard input.

    Prints each message's id.
    """
    headers = _headers(header)
    if payload is None and key is not None:
        raise click.UsageError("--key needs a JSON argument (one message)")
    value = None if payload is None else _parse_json(payload, "payload")

    async def run() -> None:
        async with RelayClient(options.ingest, options.gateway, options.token) as client:
            await _probe(client, client.ingest_url, "ingest")

            async def one(body: Any, message_key: str | None) -> None:
                published = await client.publish(topic, body, key=message_key, headers=headers)
                if as_json:
                    _emit(
                        json.dumps(
                            {
                                "id": published.id,
                                "topic": published.topic,
                                "ts": published.ts,
                                "duplicate": published.duplicate,
                            }
                        )
                    )
                else:
                    _emit(published.id)

            if payload is not None:
                await one(value, key)
                return
            async for number, line in _stdin_lines():
                await one(_parse_json(line, f"on line {number}"), None)

    _run(run())


def _print_message(console: Console | None, message: Message, as_json: bool) -> None:
    if as_json:
        _emit(json.dumps(message.to_envelope(), ensure_ascii=False, separators=(",", ":")))
    elif console is None:
        _emit(f"{message.id} {json.dumps(message.payload, ensure_ascii=False)}")
    else:
        moment = datetime.datetime.fromtimestamp(message.ts / 1000, tz=datetime.UTC)
        stamp = f"{moment:%Y-%m-%d %H:%M:%S}.{moment.microsecond // 1000:03d}Z"
        console.print(f"[bold cyan]{message.id}[/]  [dim]{stamp}[/]")
        console.print_json(data=message.payload)
        if message.headers:
            console.print(f"  [dim]headers {json.dumps(message.headers)}[/]")


@cli.command()
@click.argument("topic")
@click.option("--since", help="Cursor: a message id, or a millisecond timestamp.")
@click.option("--count", type=click.IntRange(min=1), help="Stop after N messages.")
@click.option(
    "--transport", type=click.Choice(["ws", "sse", "poll"]), default="ws", show_default=True
)
@click.option("--json", "as_json", is_flag=True, help="One envelope per line (JSON).")
@click.pass_obj
def tail(
    options: Options,
    topic: str,
    since: str | None,
    count: int | None,
    transport: str,
    as_json: bool,
) -> None:
    """Print TOPIC's messages as they arrive (gaps go to standard error).

    Reconnects and resumes by itself; Ctrl-C stops it.
    """
    console = None if as_json else _stdout_console()
    policy = RetryPolicy(initial=0.1, maximum=2.0, deadline=TAIL_RECONNECT_FOR)

    async def run() -> None:
        async with RelayClient(
            options.ingest, options.gateway, options.token, subscribe_retry=policy
        ) as client:
            await _probe(client, client.gateway_url, "the gateway")
            seen = 0
            async with client.subscribe(topic, since=since, transport=transport) as stream:
                async for item in stream:
                    if isinstance(item, Gap):
                        click.echo(f"relay: gap ({item.reason}): messages before {item.from_id}"
                                   " are gone", err=True)  # fmt: skip
                        continue
                    _print_message(console, item, as_json)
                    seen += 1
                    if count is not None and seen >= count:
                        return

    _run(run())


@cli.command()
@click.argument("topic")
@click.option("--json", "as_json", is_flag=True, help="Print the topic info as JSON.")
@click.pass_obj
def info(options: Options, topic: str, as_json: bool) -> None:
    """Show TOPIC's length, first/last id and retention (from ingest)."""

    async def run() -> None:
        async with RelayClient(options.ingest, options.gateway, options.token) as client:
            await _probe(client, client.ingest_url, "ingest")
            topic_info = await client.info(topic)
        data = {"topic": topic_info.topic, "length": topic_info.length,
                "first_id": topic_info.first_id, "last_id": topic_info.last_id,
                "retention": topic_info.retention}  # fmt: skip
        console = None if as_json else _stdout_console()
        if console is None:
            _emit(json.dumps(data))
            return
        table = Table(show_header=False, box=None)
        for name, value in data.items():
            shown = json.dumps(value) if isinstance(value, dict) else str(value)
            table.add_row(f"[bold]{name}[/]", shown)
        console.print(table)

    _run(run())


def main() -> None:
    cli(prog_name="relay")


if __name__ == "__main__":
    main()
