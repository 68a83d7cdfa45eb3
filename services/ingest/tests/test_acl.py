"""Ingest under a Valkey user allowed only the commands docs/ingest.md lists for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from relay_devtools.testing import ValkeyProcess
from relaycore.settings import RateLimit
from relaycore.valkey import ValkeyDsn, create_client

from .conftest import MakeIngest

# The commands ingest sends, and those its functions run (ACL applies inside functions too).
INGEST_COMMANDS = (
    "+ping +hello +select +info +client|setname +client|setinfo +function|load +fcall "
    "+spublish +xadd +xtrim +xrevrange +xinfo|stream +exists +get +set +incrby +pexpire +pttl "
    "+time"
)
USERS = [
    f"ingest on >ingest-pw resetchannels &relay:* ~relay:* -@all {INGEST_COMMANDS}",
    f"noload on >noload-pw resetchannels &relay:* ~relay:* -@all {INGEST_COMMANDS} -function|load",
    "admin on >admin-pw ~* &* +@all",
    "default off",
]


@pytest.fixture
def acl_valkey() -> Iterator[ValkeyProcess]:
    # Each `--user` is followed by its rule words as separate arguments, as in valkey.conf.
    args = [word for user in USERS for word in ("--user", *user.split())]
    with ValkeyProcess(extra_args=args) as server:
        yield server


async def test_every_feature_works_with_only_the_listed_commands(
    make_ingest: MakeIngest, acl_valkey: ValkeyProcess, topic: str
) -> None:
    ingest = await make_ingest(
        valkey_url=acl_valkey.url_for("ingest", "ingest-pw"), rate_limit=RateLimit(100, 60.0)
    )
    single = await ingest.post("/api/v1/messages", json={"topic": topic, "payload": 1, "key": "k"})
    again = await ingest.post("/api/v1/messages", json={"topic": topic, "payload": 1, "key": "k"})
    batch = await ingest.post(
        "/api/v1/messages/batch",
        json={"messages": [{"topic": topic, "payload": 2}, {"topic": topic + ".b", "payload": 3}]},
    )
    assert (single.status_code, again.status_code, batch.status_code) == (201, 200, 201)
    assert (await ingest.get(f"/api/v1/topics/{topic}")).json()["length"] == 2
    assert (await ingest.get("/ready")).status_code == 200


async def test_without_function_load_publishes_are_503_until_the_library_is_loaded(
    make_ingest: MakeIngest, acl_valkey: ValkeyProcess, topic: str
) -> None:
    ingest = await make_ingest(valkey_url=acl_valkey.url_for("noload", "noload-pw"))
    refused = await ingest.post("/api/v1/messages", json={"topic": topic, "payload": 1})
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    # An operator loads the library with an admin user; the restricted ingest then publishes.
    admin = await create_client(
        ValkeyDsn.from_dsn(acl_valkey.url_for("admin", "admin-pw")), name="admin"
    )
    try:
        from relaycore.streams import ensure_functions

        await ensure_functions(admin)
    finally:
        await admin.close()
    published = await ingest.post("/api/v1/messages", json={"topic": topic, "payload": 1})
    assert published.status_code == 201
