"""``/ui``, the live-tail page, in a real headless Chromium (Debian's, driven by playwright).

The page is served by a real gateway and publishes to a real ingest on another port (so through
CORS). Chromium is installed with apt when missing (as root, once); playwright's own browser
download is never used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Page,
    WebSocketRoute,
    async_playwright,
    expect,
)

from relay_client import RelayClient
from relay_devtools.testing import ServiceProcess, UvicornServer
from relay_devtools.testing.gateway import gateway_settings, publish, run_gateway
from relay_ingest.app import create_app as create_ingest
from relaycore.keys import stream_key
from relaycore.settings import ConfigError, Settings
from relaycore.valkey import ValkeyClient

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
# Set to a path (e.g. docs/ui.png) to keep a screenshot of the page with messages and a gap.
SCREENSHOT = os.environ.get("RELAY_UI_SCREENSHOT")


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium, installed with apt when missing (as root, once per machine)."""
    if not CHROMIUM.exists():
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.fail("chromium is missing: apt-get install chromium (needs root)")
        apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([*apt, "update", "-q"], check=True, env=env, capture_output=True)
        subprocess.run([*apt, "install", "-y", "-q", "chromium"], check=True, env=env,
                       capture_output=True)  # fmt: skip
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(chromium), args=LAUNCH_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


class Console:
    """Every console error and uncaught exception of a page."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)


@contextlib.asynccontextmanager
async def running_ingest(valkey_url: str) -> AsyncIterator[UvicornServer]:
    server = UvicornServer(create_ingest(Settings(valkey_url=valkey_url)))
    async with server.running():
        yield server


async def message_ids(page: Page) -> list[str]:
    ids: list[str] = await page.locator("#messages > [data-id]").evaluate_all(
        "items => items.map(item => item.dataset.id)"
    )
    return ids


def key(message_id: str) -> tuple[int, int]:
    ms, _, seq = message_id.partition("-")
    return int(ms), int(seq)


async def test_page_serves_with_its_ingest_url(valkey_url: str) -> None:
    settings = gateway_settings(valkey_url, public_ingest_url="https://ingest.example")
    async with run_gateway(settings) as server, httpx.AsyncClient(base_url=server.url) as http:
        page = await http.get("/ui")
        script = await http.get("/ui/relay.js")
        missing = await http.get("/ui/nope.js")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<meta name="relay-public-ingest-url" content="https://ingest.example">' in page.text
    for hook in ('id="topic"', 'id="subscribe"', 'id="status"', 'id="messages"',
                 'id="publish-payload"', 'id="publish"'):  # fmt: skip
        assert hook in page.text
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "export class RelaySubscription" in script.text
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert Settings.from_env({}).public_ingest_url == ""
    with pytest.raises(ConfigError, match="RELAY_PUBLIC_INGEST_URL"):
        Settings.from_env({"RELAY_PUBLIC_INGEST_URL": "ingest:8080"})


@pytest.mark.slow
async def test_live_tail_gap_publish_pause_and_clear(
    browser: Browser, valkey_url: str, valkey_client: ValkeyClient, topic: str
) -> None:
    payloads: list[Any] = [{"order": n, "items": ["tea", "cake"][: n % 3]} for n in range(5)]
    ids = await publish(valkey_client, topic, payloads, headers={"source": "shop"})
    await valkey_client.custom_command(["XTRIM", stream_key(topic), "MAXLEN", "2"])
    async with running_ingest(valkey_url) as ingest:
        settings = gateway_settings(valkey_url, public_ingest_url=ingest.url)
        async with run_gateway(settings) as gateway:
            page = await browser.new_page(viewport={"width": 1000, "height": 720})
            console = Console(page)
            await page.goto(f"{gateway.url}/ui?topic={topic}&since={ids[0]}")
            await expect(page.locator("#status")).to_have_text("live")
            items = page.locator("#messages > *")
            await expect(items).to_have_count(3)
            # The cursor was trimmed: a gap first, then what is retained, in order.
            await expect(items.nth(0)).to_have_class(re.compile(r"\bgap\b"))
            assert await message_ids(page) == ids[3:]
            pretty = await page.locator(f'[data-id="{ids[4]}"] pre').text_content()
            assert pretty == json.dumps(payloads[4], indent=2)
            assert await page.input_value("#topic") == topic

            # Live: published now, shown now.
            (live_id,) = await publish(valkey_client, topic, [{"live": True}])
            await expect(page.locator(f'#messages > [data-id="{live_id}"]')).to_have_count(1)

            # Publish from the page: to ingest on another origin, through CORS.
            await page.fill("#publish-payload", '{"from": "the page", "n": [1, 2]}')
            await page.click("#publish")
            result = page.locator("#publish-result")
            await expect(result).to_have_text(re.compile(r"^published \d+-\d+$"))
            page_id = await result.get_attribute("data-id")
            assert page_id is not None
            shown = page.locator(f'#messages > [data-id="{page_id}"] pre')
            await expect(shown).to_have_text(
                json.dumps({"from": "the page", "n": [1, 2]}, indent=2)
            )
            if SCREENSHOT:
                await page.set_viewport_size({"width": 1000, "height": 900})
                await page.fill("#publish-payload", '{"hello": "world"}')
                await page.screenshot(path=SCREENSHOT)
            await page.fill("#publish-payload", "{not json")
            await page.click("#publish")
            await expect(result).to_have_text(re.compile("^invalid JSON"))

            # Pause holds new messages back; resume shows them, in order.
            await page.click("#pause")
            (held_id,) = await publish(valkey_client, topic, [{"held": True}])
            await expect(page.locator("#pause")).to_have_text("Resume (1 new)")
            assert held_id not in await message_ids(page)
            await page.click("#pause")
            await expect(page.locator(f'#messages > [data-id="{held_id}"]')).to_have_count(1)
            assert await message_ids(page) == [*ids[3:], live_id, page_id, held_id]

            await page.click("#clear")
            await expect(items).to_have_count(0)
            (after_id,) = await publish(valkey_client, topic, [{"after": "clear"}])
            await expect(page.locator(f'#messages > [data-id="{after_id}"]')).to_have_count(1)
            await page.close()
    assert console.errors == []


@pytest.mark.slow
async def test_reconnects_across_a_gateway_restart_without_duplicates(
    browser: Browser, valkey_url: str, topic: str
) -> None:
    async with (
        running_ingest(valkey_url) as ingest,
        ServiceProcess("gateway", valkey_url, RELAY_PUBLIC_INGEST_URL=ingest.url) as gateway,
        RelayClient(ingest.url) as client,
    ):
        page = await browser.new_page()
        console = Console(page)
        await page.goto(f"{gateway.url}/ui?topic={topic}")
        status = page.locator("#status")
        await expect(status).to_have_text("live")
        messages = page.locator("#messages > .message")

        async def send(numbers: range) -> None:
            for number in numbers:
                await client.publish(topic, {"n": number})

        await send(range(10))
        await expect(messages).to_have_count(10)
        stopping = asyncio.create_task(gateway.terminate())  # SIGTERM: close 1012, drain
        await expect(status).to_have_text("reconnecting", timeout=15_000)
        await send(range(10, 15))
        await stopping
        await gateway.start()
        await expect(status).to_have_text("live", timeout=30_000)
        await send(range(15, 20))
        await expect(messages).to_have_count(20, timeout=30_000)
        ids = await message_ids(page)
        texts = await page.locator("#messages .payload").all_text_contents()
        await page.close()
    assert [json.loads(text)["n"] for text in texts] == list(range(20))
    assert [key(i) for i in ids] == sorted({key(i) for i in ids})
    # While the gateway was down Chromium reports the refused connections; nothing else.
    unexpected = [e for e in console.errors if not re.search(r"WebSocket connection|net::ERR", e)]
    assert unexpected == []


async def test_relay_js_is_reusable_over_sse(
    browser: Browser, valkey_url: str, valkey_client: ValkeyClient, topic: str
) -> None:
    ids = await publish(valkey_client, topic, ["a", "b", "c"])
    async with run_gateway(gateway_settings(valkey_url)) as gateway:
        page = await browser.new_page()
        console = Console(page)
        await page.goto(f"{gateway.url}/ui")
        await expect(page.locator("#status")).to_have_text("idle")
        received = await page.evaluate(
            """async ([topic, since]) => {
                const { RelaySubscription } = await import("/ui/relay.js");
                const sub = new RelaySubscription({ topic, since, transport: "sse" });
                const got = [];
                await new Promise((resolve) => {
                    sub.addEventListener("message", (e) => {
                        got.push([e.detail.id, e.detail.payload]);
                        if (got.length === 2) resolve();
                    });
                    sub.start();
                });
                const status = sub.status;
                sub.close();
                return { got, status, transport: sub.transport };
            }""",
            [topic, ids[0]],
        )
        await page.close()
    assert received == {"got": [[ids[1], "b"], [ids[2], "c"]], "status": "live",
                        "transport": "sse"}  # fmt: skip
    assert console.errors == []


async def test_page_falls_back_to_sse_when_websockets_are_blocked(
    browser: Browser, valkey_url: str, valkey_client: ValkeyClient, topic: str
) -> None:
    ids = await publish(valkey_client, topic, [1, 2])
    async with run_gateway(gateway_settings(valkey_url)) as gateway:
        page = await browser.new_page()
        console = Console(page)
        blocked: list[str] = []

        async def refuse(ws: WebSocketRoute) -> None:
            # Like a proxy that does not pass WebSocket upgrades through.
            blocked.append(ws.url)
            await ws.close(code=1011)

        await page.route_web_socket(re.compile(r"/api/v1/ws"), refuse)
        await page.goto(f"{gateway.url}/ui?topic={topic}&since=0")
        await expect(page.locator("#status")).to_have_text("live", timeout=15_000)
        await expect(page.locator("#messages > .message")).to_have_count(2)
        assert await message_ids(page) == ids
        (live_id,) = await publish(valkey_client, topic, [3])
        await expect(page.locator(f'#messages > [data-id="{live_id}"]')).to_have_count(1)
        await page.close()
    assert len(blocked) == 2
    assert console.errors == []


@pytest.mark.slow
async def test_with_jwt_the_page_uses_its_token_and_stops_without_one(
    browser: Browser, valkey_url: str, topic: str
) -> None:
    secret = "ui-test-secret-with-enough-bytes-for-hs256"
    claims = {"sub": "ui", "exp": int(time.time()) + 300,
              "topics": {"publish": [topic], "subscribe": [topic]}}  # fmt: skip
    token = jwt.encode(claims, secret, algorithm="HS256")
    jwt_env = {"RELAY_AUTH": "jwt", "RELAY_JWT_SECRET": secret}
    ingest = ServiceProcess("ingest", valkey_url, **jwt_env)
    settings = gateway_settings(
        valkey_url, auth="jwt", jwt_secret=secret, public_ingest_url=ingest.url
    )
    try:
        async with run_gateway(settings) as gateway:
            # With RELAY_AUTH=jwt, CORS needs the page's origin listed.
            ingest.env["RELAY_ALLOWED_ORIGINS"] = gateway.url
            await ingest.start()
            page = await browser.new_page()
            console = Console(page)
            await page.goto(f"{gateway.url}/ui?topic={topic}&token={token}")
            await expect(page.locator("#status")).to_have_text("live")
            await page.fill("#publish-payload", '{"signed": true}')
            await page.click("#publish")
            result = page.locator("#publish-result")
            await expect(result).to_have_text(re.compile(r"^published "))
            published = await result.get_attribute("data-id")
            await expect(page.locator(f'#messages > [data-id="{published}"]')).to_have_count(1)

            anonymous = await browser.new_page()
            anonymous_console = Console(anonymous)
            await anonymous.goto(f"{gateway.url}/ui?topic={topic}")
            await expect(anonymous.locator("#status")).to_have_text("failed")
            await expect(anonymous.locator("#count")).to_contain_text("unauthorized")
            await page.close()
            await anonymous.close()
    finally:
        await ingest.close()
    assert console.errors == []
    assert anonymous_console.errors == []
