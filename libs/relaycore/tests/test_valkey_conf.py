"""The repo's valkey.conf on a real server: durability settings and the per-service ACL users.

Each service connects with real GLIDE clients as its ACL user and must be able to do its whole
job; every command or key outside its grant must be refused by the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from glide import Batch, ExpireOptions, MaxId, MinId, RequestError

from relay_devtools.testing.servers import ValkeyProcess
from relaycore.ids import StreamId
from relaycore.keys import idempotency_key, rate_limit_key, signal_channel, stream_key
from relaycore.streams import (
    FUNCTION_LIBRARY,
    PENDING_FUNCTION,
    PUBLISH_FUNCTION,
    StreamRetention,
    add_publish,
    ensure_functions,
    parse_entries,
    read_after,
    stream_info,
)
from relaycore.valkey import ValkeyClient, ValkeyDsn, create_client

REPO = Path(__file__).resolve().parents[3]
VALKEY_CONF = REPO / "valkey.conf"
INGEST = ("ingest", "relay-dev-ingest")
GATEWAY = ("gateway", "relay-dev-gateway")
RETAIN = StreamRetention(maxlen=1000, max_age_ms=3_600_000, idempotency_ttl_ms=60_000)


@pytest.fixture(scope="module")
def server() -> Iterator[ValkeyProcess]:
    with ValkeyProcess(config_file=VALKEY_CONF) as process:
        yield process


async def _client(server: ValkeyProcess, user: tuple[str, str] | None, name: str) -> ValkeyClient:
    url = server.url_for(*user) if user else server.url
    return await create_client(ValkeyDsn.from_dsn(url), name=name, lazy=False)


@pytest.fixture
async def admin(server: ValkeyProcess) -> AsyncIterator[ValkeyClient]:
    client = await _client(server, None, "relay-admin")
    yield client
    await client.close()


@pytest.fixture
async def ingest(server: ValkeyProcess) -> AsyncIterator[ValkeyClient]:
    client = await _client(server, INGEST, "relay-ingest")
    yield client
    await client.close()


@pytest.fixture
async def gateway(server: ValkeyProcess) -> AsyncIterator[ValkeyClient]:
    client = await _client(server, GATEWAY, "relay-gateway")
    yield client
    await client.close()


async def _publish(client: ValkeyClient, topic: str, payloads: list[bytes]) -> list[bytes]:
    batch = Batch(is_atomic=False)
    for payload in payloads:
        add_publish(batch, topic, payload, b'{"k":"v"}', None, RETAIN)
    results = await client.exec(batch, raise_on_error=True)
    assert results is not None
    return [result[0] for result in results]  # type: ignore[index]  # fcall result is [id, dup]


async def _refused(call: asyncio.Future[object] | object) -> str:
    """Await ``call`` and return the server's refusal text; fail if it was allowed."""
    with pytest.raises(RequestError) as caught:
        await call  # type: ignore[misc]  # every caller passes an awaitable GLIDE call
    message = str(caught.value).lower()
    assert "no permissions" in message or "noperm" in message, message
    return message


def test_conf_has_the_production_settings() -> None:
    directives = {}
    for line in VALKEY_CONF.read_text().splitlines():
        words = line.split()
        if words and not words[0].startswith("#") and words[0] != "user":
            directives[words[0]] = " ".join(words[1:])
    assert directives["appendonly"] == "yes"
    assert directives["appendfsync"] == "everysec"
    assert directives["aof-use-rdb-preamble"] == "yes"
    assert directives["no-appendfsync-on-rewrite"] == "no"
    assert directives["maxmemory-policy"] == "noeviction"
    assert directives["maxmemory"]
    assert directives["protected-mode"] == "yes"
    assert directives["bind"].startswith("127.0.0.1")


async def test_server_runs_with_the_conf(admin: ValkeyClient) -> None:
    config = await admin.custom_command(
        ["CONFIG", "GET", "maxmemory-policy", "appendfsync", "protected-mode", "appendonly"]
    )
    assert isinstance(config, dict)
    assert config[b"maxmemory-policy"] == b"noeviction"
    assert config[b"appendfsync"] == b"everysec"
    assert config[b"protected-mode"] == b"yes"
    assert config[b"appendonly"] == b"yes"
    users = await admin.custom_command(["ACL", "USERS"])
    assert set(users) >= {b"default", b"ingest", b"gateway"}  # type: ignore[arg-type]  # list


async def test_ingest_installs_the_function_and_publishes(ingest: ValkeyClient, topic: str) -> None:
    await ensure_functions(ingest)
    libraries = await ingest.function_list(b"relay")
    assert libraries
    ids = await _publish(ingest, topic, [b'{"n":1}', b'{"n":2}'])
    info = await stream_info(ingest, topic)
    assert info is not None
    assert info.length == 2
    assert info.last_id == StreamId.parse(ids[-1])
    assert await ingest.xlen(stream_key(topic)) == 2
    entries = await read_after(ingest, topic, StreamId(0, 0), 10)
    assert [e.payload for e in entries] == [b'{"n":1}', b'{"n":2}']


async def test_ingest_idempotent_publish(ingest: ValkeyClient, topic: str) -> None:
    await ensure_functions(ingest)
    batch = Batch(is_atomic=False)
    add_publish(batch, topic, b"1", None, "key-1", RETAIN)
    add_publish(batch, topic, b"2", None, "key-1", RETAIN)
    first, again = await ingest.exec(batch, raise_on_error=True)  # type: ignore[misc]  # 2 results
    assert again == [first[0], 1]  # type: ignore[index]  # fcall result is [id, dup]
    assert await ingest.get(idempotency_key(topic, "key-1")) == first[0]  # type: ignore[index]


async def test_ingest_uses_rate_limit_and_idempotency_keys(
    ingest: ValkeyClient, topic: str
) -> None:
    counter = rate_limit_key(f"principal-{topic}")
    assert await ingest.incr(counter) == 1
    assert await ingest.incrby(counter, 4) == 5
    # The rate limiter sets the window's expiry only once (PEXPIRE ... NX).
    assert await ingest.pexpire(counter, 60_000, ExpireOptions.HasNoExpiry)
    assert not await ingest.pexpire(counter, 1, ExpireOptions.HasNoExpiry)
    assert 0 < await ingest.pttl(counter) <= 60_000
    key = idempotency_key(topic, "k")
    assert await ingest.custom_command(["SET", key, "1-0", "NX", "PX", "60000"]) == "OK"
    assert await ingest.get(key) == b"1-0"


async def test_gateway_reads_history_and_info(
    ingest: ValkeyClient, gateway: ValkeyClient, topic: str
) -> None:
    await ensure_functions(ingest)
    ids = await _publish(ingest, topic, [b"1", b"2", b"3"])
    entries = await read_after(gateway, topic, StreamId.parse(ids[0]), 10)
    assert [e.id for e in entries] == [StreamId.parse(i) for i in ids[1:]]
    info = await stream_info(gateway, topic)
    assert info is not None
    assert info.length == 3
    newest = await gateway.xrevrange(stream_key(topic), MaxId(), MinId(), 1)
    assert newest is not None
    assert list(newest) == [ids[-1]]


async def test_gateway_blocking_xread_sees_a_publish(
    server: ValkeyProcess, ingest: ValkeyClient, topic: str
) -> None:
    await ensure_functions(ingest)
    (first,) = await _publish(ingest, topic, [b"0"])
    # Blocking reads get a client of their own (GLIDE serialises commands per connection).
    reader = await _client(server, GATEWAY, "relay-gateway-reader")
    try:
        read = asyncio.ensure_future(
            reader.custom_command(["XREAD", "BLOCK", "5000", "STREAMS", stream_key(topic), first])
        )
        await asyncio.sleep(0.2)
        assert not read.done()
        (second,) = await _publish(ingest, topic, [b'"live"'])
        raw = await asyncio.wait_for(read, 5)
    finally:
        await reader.close()
    assert isinstance(raw, dict)
    entries = parse_entries(raw[stream_key(topic).encode()])
    assert [(e.id, e.payload) for e in entries] == [(StreamId.parse(second), b'"live"')]


async def test_gateway_cannot_write(gateway: ValkeyClient, topic: str) -> None:
    key = stream_key(topic)
    await _refused(gateway.custom_command(["XADD", key, "*", "p", "1"]))
    await _refused(gateway.fcall(PUBLISH_FUNCTION, keys=[key], arguments=["1", "", "10", "0", "1"]))
    await _refused(gateway.custom_command(["DEL", key]))
    await _refused(gateway.custom_command(["FUNCTION", "LOAD", "REPLACE", FUNCTION_LIBRARY]))
    await _refused(gateway.custom_command(["SET", idempotency_key(topic, "k"), "1"]))
    await _refused(gateway.custom_command(["XTRIM", key, "MAXLEN", "0"]))
    message = await _refused(gateway.custom_command(["XREAD", "STREAMS", "other:{t}:s", "0-0"]))
    assert "key" in message


@pytest.mark.parametrize("user", [INGEST, GATEWAY], ids=["ingest", "gateway"])
@pytest.mark.parametrize(
    "command",
    [
        ["FLUSHALL"],
        ["FLUSHDB"],
        ["CONFIG", "SET", "appendonly", "no"],
        ["CONFIG", "GET", "requirepass"],
        ["KEYS", "*"],
        ["SCAN", "0"],
        ["DEBUG", "SLEEP", "0"],
        ["SHUTDOWN", "NOSAVE"],
        ["ACL", "LIST"],
        ["FUNCTION", "FLUSH"],
        ["FUNCTION", "DELETE", "relay"],
        ["PUBLISH", "relay", "x"],
        ["EVAL", "return 1", "0"],
        ["SCRIPT", "FLUSH"],
        ["BGREWRITEAOF"],
        ["CLIENT", "KILL", "ID", "1"],
        ["CLUSTER", "RESET"],
        ["CLUSTER", "FORGET", "0" * 40],
        ["CLUSTER", "ADDSLOTS", "1"],
    ],
    ids=lambda command: "-".join(command[:2]).lower(),
)
async def test_no_admin_or_dangerous_commands(
    server: ValkeyProcess, admin: ValkeyClient, user: tuple[str, str], command: list[str]
) -> None:
    # ACL DRYRUN asks the ACL alone; the live call proves the server refuses it too (DEBUG is
    # also off by `enable-debug-command no`, which answers before the ACL does).
    verdict = await admin.custom_command(["ACL", "DRYRUN", user[0], *command])
    assert isinstance(verdict, bytes)
    assert b"no permissions" in verdict.lower(), verdict
    client = await _client(server, user, "relay-refusal")
    try:
        with pytest.raises(RequestError):
            await client.custom_command(command)  # type: ignore[arg-type]  # str list
    finally:
        await client.close()


@pytest.mark.parametrize("user", [INGEST, GATEWAY], ids=["ingest", "gateway"])
async def test_no_keys_outside_relay_prefix(server: ValkeyProcess, user: tuple[str, str]) -> None:
    client = await _client(server, user, "relay-refusal")
    try:
        for command in (
            ["XLEN", "other:{t}:s"],
            ["XRANGE", "x", "-", "+"],
            ["XINFO", "STREAM", "session:1"],
        ):
            message = await _refused(client.custom_command(command))  # type: ignore[arg-type]
            assert "key" in message
    finally:
        await client.close()


async def test_ingest_function_refused_outside_relay_keys(ingest: ValkeyClient) -> None:
    await ensure_functions(ingest)
    # The key check applies to FCALL's declared keys: the function cannot be aimed elsewhere.
    await _refused(
        ingest.fcall(PUBLISH_FUNCTION, keys=["other:s"], arguments=["1", "", "10", "0", "1"])
    )
    await _refused(ingest.custom_command(["SET", "other:key", "1"]))
    await _refused(ingest.custom_command(["GET", "session:1"]))


async def test_admin_is_the_default_user_on_loopback(admin: ValkeyClient) -> None:
    # The built-in `default` user has every command and no password; protected mode (on in the
    # conf) is what confines it to loopback connections.
    assert await admin.custom_command(["ACL", "WHOAMI"]) == b"default"
    assert await admin.custom_command(["CONFIG", "GET", "protected-mode"]) == {
        b"protected-mode": b"yes"
    }


def test_requirepass_gives_the_admin_a_password() -> None:
    """Deployments that listen beyond loopback pass ``--requirepass``; it must take effect."""
    with ValkeyProcess(config_file=VALKEY_CONF, extra_args=["--requirepass", "admin-pw"]) as vp:

        async def check() -> None:
            with pytest.raises(Exception, match=r"(?i)auth|password"):
                await _client(vp, None, "relay-admin")
            admin = await _client(vp, ("default", "admin-pw"), "relay-admin")
            service = await _client(vp, INGEST, "relay-ingest")
            try:
                assert await admin.custom_command(["ACL", "WHOAMI"]) == b"default"
                assert await service.ping() == b"PONG"
            finally:
                await admin.close()
                await service.close()

        asyncio.run(check())


async def test_full_memory_refuses_writes_and_evicts_nothing(topic: str) -> None:
    """noeviction: a full Valkey answers publishes with OOM (ingest turns it into 503) and keeps
    every stream; an evicting policy would drop whole streams without an error."""
    with ValkeyProcess(config_file=VALKEY_CONF, extra_args=["--maxmemory", "3mb"]) as server:
        ingest = await _client(server, INGEST, "relay-ingest")
        try:
            await ensure_functions(ingest)
            payload = b'"' + b"x" * 60_000 + b'"'
            written: list[bytes] = []
            refusal: RequestError | None = None
            for _ in range(200):
                try:
                    written += await _publish(ingest, topic, [payload])
                except RequestError as error:
                    refusal = error
                    break
            assert "OOM" in str(refusal)
            assert written
            entries = await read_after(ingest, topic, StreamId(0, 0), 1000)
            assert [entry.id for entry in entries] == [StreamId.parse(i) for i in written]
        finally:
            await ingest.close()


async def test_gateway_may_run_the_safety_read_and_nothing_else_of_the_library(
    ingest: ValkeyClient, gateway: ValkeyClient, topic: str
) -> None:
    """What a cluster gateway runs: FCALL_RO relay_pending (its XREADs pass the gateway's ACL)."""
    await ensure_functions(ingest)
    (first,) = await _publish(ingest, topic, [b"0"])
    key = stream_key(topic)
    pending = await gateway.custom_command(
        ["FCALL_RO", PENDING_FUNCTION, "0", key, "0-0", key, first]
    )
    assert pending == [1, 0]
    await _refused(gateway.custom_command(["SPUBLISH", signal_channel(topic), "x"]))


@pytest.mark.parametrize("user", [INGEST, GATEWAY], ids=["ingest", "gateway"])
async def test_users_connect_to_a_cluster(tmp_path: Path, user: tuple[str, str]) -> None:
    # A cluster client learns the topology with CLUSTER SLOTS on connect; without that grant
    # RELAY_VALKEY_CLUSTER=true cannot start with the service users (the cluster overlay).
    server = ValkeyProcess(
        config_file=VALKEY_CONF,
        data_dir=tmp_path,
        extra_args=["--cluster-enabled", "yes", "--cluster-config-file", str(tmp_path / "n.conf")],
    )
    with server:
        admin = await _client(server, None, "relay-admin")
        try:
            await admin.custom_command(["CLUSTER", "ADDSLOTSRANGE", "0", "16383"])
            for _ in range(200):
                info = await admin.custom_command(["CLUSTER", "INFO"])
                if b"cluster_state:ok" in str(info).encode():
                    break
                await asyncio.sleep(0.05)
        finally:
            await admin.close()
        client = await create_client(
            ValkeyDsn.from_dsn(server.url_for(*user)),
            cluster=True,
            name="relay-cluster",
            lazy=False,
        )
        try:
            assert await client.custom_command(["PING"]) == b"PONG"
            assert await client.xlen(stream_key("acl-cluster")) == 0
        finally:
            await client.close()
