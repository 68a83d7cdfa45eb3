"""Schemathesis against both services' ``/openapi.json``, served by the real processes.

``relay-ingest`` and ``relay-gateway`` run as ``python -m`` processes on the session's real
Valkey; Schemathesis loads each service's live OpenAPI document and, for every operation, sends
requests generated from it — valid ones (positive mode) and ones that break the schema
(negative mode). Every response must pass Schemathesis' checks: no 5xx, a status code the
document lists, the documented content type and headers, a body matching the response schema,
valid requests accepted and invalid ones refused.
Example counts are bounded so the module stays around a minute.

Left out: ``/api/v1/sse`` (an endless stream: no response to validate; covered by the SSE tests)
and ``/api/v1/ws`` (needs an upgrade; the WebSocket tests and their Hypothesis frames cover it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from relay_devtools.testing.services import ServiceProcess

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    # Valid requests are accepted (2xx/401/403/404/429), invalid ones refused (4xx):
    # the document is as strict as the service, no stricter and no looser.
    positive_data_acceptance,
    negative_data_rejection,
]
EXAMPLES = 100
SKIPPED = {"/api/v1/sse", "/api/v1/ws"}

pytestmark = [
    pytest.mark.slow,
    # Hypothesis scans loaded modules for constants and touches GLIDE's deprecated modules.
    pytest.mark.filterwarnings("ignore:Importing from 'glide:DeprecationWarning"),
    pytest.mark.timeout(240),
]


@pytest.fixture(scope="module")
def services(valkey_url: str) -> Iterator[dict[str, ServiceProcess]]:
    common = {
        "VALKEY_URL": valkey_url,
        # A loaded box must not turn examples into 503s; shutdown stays quick.
        "VALKEY_TIMEOUT": "10s",
        "SHUTDOWN_GRACE": "3s",
        "SHUTDOWN_DRAIN": "1s",
        "ACCESS_LOG": "false",
    }
    with (
        ServiceProcess("ingest", **common) as ingest,
        ServiceProcess("gateway", **common) as gateway,
    ):
        yield {"ingest": ingest, "gateway": gateway}


def _short_poll(case: Any) -> None:
    """Long-poll examples ask for no wait: each would otherwise hold up to 55 s."""
    if case.path != "/api/v1/poll":
        return
    if case.query is None:
        case.query = {}
    if isinstance(case.query, dict):
        timeout = case.query.get("timeout", 0)
        if isinstance(timeout, int | float) and not isinstance(timeout, bool):
            case.query["timeout"] = min(timeout, 0.2)


def _has_inputs(operation: Any) -> bool:
    return bool(operation.body) or any(True for _ in operation.iter_parameters())


@pytest.mark.parametrize("service", ["ingest", "gateway"])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_conforms_to_the_openapi_document(
    services: dict[str, ServiceProcess], service: str, mode: GenerationMode
) -> None:
    server = services[service]
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    failures: list[str] = []
    tested = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in SKIPPED:
            continue
        if mode is GenerationMode.NEGATIVE and not _has_inputs(operation):
            continue  # nothing to break: /health, /ready, /metrics take no input
        tested += 1

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            _short_poll(case)
            case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=15)

        try:
            run()
        except Exception as error:  # collect every operation's failure, then fail once
            failures.append(f"{operation.method.upper()} {operation.path}: {error}")
    assert tested >= (4 if mode is GenerationMode.POSITIVE else 1)
    assert not failures, "\n\n".join(failures)
