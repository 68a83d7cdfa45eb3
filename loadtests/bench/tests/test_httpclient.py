"""The minimal HTTP/1.1 response parser the publisher and long-poll loops rely on."""

from __future__ import annotations

import pytest
from loadtests.bench.httpclient import HttpError, build_request, parse_response


def test_content_length_response_and_what_follows_it() -> None:
    raw = b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nEtag: 7\r\n\r\nhelloHTTP/1.1"
    parsed = parse_response(raw)
    assert parsed is not None
    response, used = parsed
    assert (response.status, response.body, response.headers[b"etag"]) == (201, b"hello", b"7")
    assert raw[used:] == b"HTTP/1.1"


def test_incomplete_response_waits_for_more_bytes() -> None:
    assert parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc") is None
    assert parse_response(b"HTTP/1.1 200 OK\r\nContent-") is None


def test_chunked_body_is_joined() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
    )
    parsed = parse_response(raw)
    assert parsed is not None
    assert parsed[0].body == b"abcde"
    assert parsed[1] == len(raw)
    assert parse_response(raw[:-3]) is None


def test_garbage_is_an_error() -> None:
    with pytest.raises(HttpError):
        parse_response(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_build_request_sets_length_for_posts() -> None:
    raw = build_request("POST", "/p", "h:1", b"{}", {"Content-Type": "application/json"})
    assert raw.startswith(b"POST /p HTTP/1.1\r\nHost: h:1\r\nContent-Type: application/json\r\n")
    assert raw.endswith(b"Content-Length: 2\r\n\r\n{}")
