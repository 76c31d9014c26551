"""Hostile token endpoints on loopback: absurd numbers, huge or endless bodies, bombs, trickles, echoed secrets, forged text."""

from __future__ import annotations

import base64
import functools
import io
import json
import logging
import os
import socket
import threading
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode

import pytest

from fakes import FakeClock
from freshtoken import cli
from freshtoken.config import Account
from freshtoken.errors import MalformedAnswer, RefreshFailed, TemporaryError
from freshtoken.formats import render_values
from freshtoken.model import Secret
from freshtoken.oauth import MAX_ANSWER, Timeouts, TokenClient, clean_server_text, make_session
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer

MiB = 1024 * 1024

# ------------------------------------------------------------------ a server that says what no server should


Answer = Callable[["RawServer", socket.socket, bytes], bool]  # True: keep the connection for the next request


class RawServer:
    """A loopback HTTP/1.1 server whose answers are functions writing raw bytes, one scripted answer per request.

    It counts the body bytes it managed to send (`sent`), so a test can tell how
    much of an endless answer the client took before hanging up.
    """

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/token"
        self.requests: list[bytes] = []
        self.sent = 0
        self.connections = 0
        self.hung_up = False  # the client closed the connection while an answer was being sent
        self.stopping = threading.Event()
        self.done = threading.Event()
        self._conn: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.listener.close()
        if self._conn is not None:
            try:
                self._conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=30)

    def send(self, conn: socket.socket, data: bytes, body: bool = True) -> None:
        conn.sendall(data)
        if body:
            self.sent += len(data)

    def _serve(self) -> None:
        try:
            while self.answers and not self.stopping.is_set():
                try:
                    conn, _ = self.listener.accept()
                except OSError:
                    return
                self.connections += 1
                self._conn = conn
                with conn:
                    while self.answers:
                        request = _read_request(conn)
                        if request is None:
                            break
                        self.requests.append(request)
                        try:
                            keep = self.answers.pop(0)(self, conn, request)
                        except OSError:
                            self.hung_up = True
                            break
                        if not keep:
                            break
        finally:
            self.done.set()


def _read_request(conn: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def request_body(request: bytes) -> str:
    return request.partition(b"\r\n\r\n")[2].decode()


def request_header(request: bytes, name: str) -> str:
    for line in request.decode().split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.lower() == name.lower():
            return value.strip()
    return ""


def json_answer(document: bytes, status: str = "200 OK", headers: str = "Content-Type: application/json\r\n") -> Answer:
    def answer(server: RawServer, conn: socket.socket, request: bytes) -> bool:
        head = f"HTTP/1.1 {status}\r\n{headers}Content-Length: {len(document)}\r\n\r\n".encode()
        conn.sendall(head + document)  # one send: two would wait on the client's delayed ACK
        server.sent += len(document)
        return True

    return answer


def stream(head: str, piece: bytes, total: int) -> Answer:
    """Headers, then `piece` again and again up to `total` bytes or until the client hangs up."""

    def answer(server: RawServer, conn: socket.socket, request: bytes) -> bool:
        server.send(conn, head.encode(), body=False)
        while server.sent < total and not server.stopping.is_set():
            server.send(conn, piece)
        return False

    return answer


def trickle(head: bytes, body: bytes, every: float = 0.05) -> Answer:
    """Send `head` then `body` one byte at a time, a byte every `every` seconds: each read is quick, the whole is not."""

    def answer(server: RawServer, conn: socket.socket, request: bytes) -> bool:
        for i in range(len(head + body)):
            if server.stopping.wait(every):
                return False
            server.send(conn, (head + body)[i : i + 1])
        return False

    return answer


def client_for(timeouts: Timeouts | None = None) -> TokenClient:
    return TokenClient(make_session(), timeouts or Timeouts(2.0, 2.0), clock=FakeClock())


def account_at(url: str, **overrides: Any) -> Account:
    values: dict[str, Any] = {
        "name": "hostile",
        "token_url": url,
        "client_id": DEMO_CLIENT_ID,
        "client_secret": Secret(DEMO_CLIENT_SECRET),
        "client_auth": "basic",
    }
    values.update(overrides)
    return Account(**values)


@pytest.fixture
def client() -> Iterator[TokenClient]:
    """A TokenClient with 2 s timeouts on a fake clock; its session is closed afterwards."""
    token_client = client_for()
    yield token_client
    token_client.session.close()


# ------------------------------------------------------------------ numbers: expires_in and friends


def answer_with(client: TokenClient, raw: bytes) -> Any:
    """What refresh() makes of a 200 answer whose JSON text is `raw` (Python's json reads NaN and Infinity)."""
    with AuthServer() as server:
        server.script(200, raw=raw, headers={"Content-Type": "application/json"})
        return client.refresh(account_at(server.token_url), Secret("old-rt"))


MALFORMED_EXPIRES_IN = [
    "0",
    "-5",
    "0.0",
    '"abc"',
    '"0"',
    '"-5"',
    '""',
    "Infinity",
    "-Infinity",
    "NaN",
    "1e400",
    f'"{"9" * 400}"',
    "true",
    "[]",
    "{}",
]


@pytest.mark.parametrize("value", MALFORMED_EXPIRES_IN)
def test_an_expires_in_that_is_not_a_positive_number_is_a_malformed_answer_keeping_the_rotated_refresh_token(
    client: TokenClient, value: str
) -> None:
    """expires_in of 0, negative, NaN, infinite, junk or a 400-digit string is refused as MalformedAnswer carrying the new refresh token."""
    with pytest.raises(MalformedAnswer) as caught:
        answer_with(client, f'{{"access_token": "A2", "refresh_token": "R2", "expires_in": {value}}}'.encode())
    assert caught.value.refresh_token == Secret("R2")
    assert "expires_in" in str(caught.value)
    assert len(str(caught.value)) < 200


def test_a_malformed_answer_without_a_refresh_token_carries_none(client: TokenClient) -> None:
    """A refused answer that rotated nothing says so: MalformedAnswer.refresh_token is None."""
    with pytest.raises(MalformedAnswer) as caught:
        answer_with(client, b'{"access_token": "A2", "expires_in": -1}')
    assert caught.value.refresh_token is None


@pytest.mark.parametrize("value", ["1700000000000", "1e12", "31536001", "9" * 400, '"1700000000000"'])
def test_an_expires_in_above_a_year_is_clamped_to_an_hour_with_a_warning(
    client: TokenClient, caplog: pytest.LogCaptureFixture, value: str
) -> None:
    """A finite expires_in above a year (milliseconds by mistake, 400 digits) gives an hour from now and a warning naming the account."""
    caplog.set_level(logging.WARNING, logger="freshtoken.oauth")
    result = answer_with(client, f'{{"access_token": "A2", "expires_in": {value}}}'.encode())
    assert result.access.expires_at == client.clock() + 3600
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.getMessage().startswith("hostile: ") and "more than a year" in record.getMessage()


@pytest.mark.parametrize(("value", "seconds"), [("3600", 3600), ('"7200"', 7200), ('" 60 "', 60), ("0.5", 0.5), ("31536000", 31536000)])
def test_a_sane_expires_in_is_used_as_sent(client: TokenClient, value: str, seconds: float) -> None:
    """Positive numbers up to a year, as numbers or strings of digits, set expires_at to now plus that many seconds."""
    result = answer_with(client, f'{{"access_token": "A2", "expires_in": {value}}}'.encode())
    assert result.access.expires_at == client.clock() + seconds


@pytest.mark.parametrize("document", [b'{"access_token": "A2"}', b'{"access_token": "A2", "expires_in": null}'])
def test_an_absent_expires_in_means_an_hour(client: TokenClient, document: bytes) -> None:
    """Without expires_in (RFC 6749 lets a server leave it out) the token is assumed to live an hour."""
    assert answer_with(client, document).access.expires_at == client.clock() + 3600


@pytest.mark.parametrize("value", ["0", "-86400", '"abc"', "Infinity", "NaN", "1e30", "9" * 400, f'"{"9" * 400}"', "true"])
def test_an_insane_refresh_token_expires_in_is_ignored(client: TokenClient, value: str) -> None:
    """refresh_token_expires_in that is not a sane positive number leaves the refresh token's expiry unknown; the answer is used."""
    result = answer_with(client, f'{{"access_token": "A2", "expires_in": 60, "refresh_token_expires_in": {value}}}'.encode())
    assert result.refresh_token_expires_at is None
    assert result.access.expires_at == client.clock() + 60


def test_a_sane_refresh_token_expires_in_is_kept(client: TokenClient) -> None:
    """A refresh_token_expires_in of 180 days sets the refresh token's expiry."""
    result = answer_with(client, b'{"access_token": "A2", "refresh_token_expires_in": 15552000}')
    assert result.refresh_token_expires_at == client.clock() + 15552000


@pytest.mark.parametrize(
    "retry_after", ["Mon, 01 Jan 99999999999999999999 00:00:00 GMT", "Mon, 01 Jan 1970 00:00:00 -9999999999999999999", "9" * 400]
)
def test_an_absurd_retry_after_is_a_plain_temporary_error(client: TokenClient, retry_after: str) -> None:
    """A Retry-After no calendar holds still gives a TemporaryError with a capped or no retry hint, never an OverflowError."""
    with AuthServer() as server:
        server.script(503, json={"error": "temporarily_unavailable"}, headers={"Retry-After": retry_after})
        with pytest.raises(TemporaryError) as caught:
            client.refresh(account_at(server.token_url), Secret("rt"))
    assert caught.value.retry_after is None or caught.value.retry_after <= 3600


def test_deeply_nested_json_is_a_malformed_answer(client: TokenClient) -> None:
    """A 200 answer of 100,000 nested brackets (a RecursionError in json) is refused as not JSON."""
    with pytest.raises(MalformedAnswer, match="not JSON"):
        answer_with(client, b"[" * 100_000)


@pytest.mark.parametrize("fmt", ["json", "env"])
@pytest.mark.parametrize("expires_at", [float("inf"), float("nan"), 1.7e15, 1e300, -5.0])
def test_outputs_of_an_absurd_stored_expiry_render_as_expired(fmt: str, expires_at: float) -> None:
    """A stored expires_at no calendar holds renders (json, env) as 0, long expired, instead of crashing with `year out of range`."""
    text = render_values(fmt, "tok", "Bearer", expires_at, None, "demo").decode()
    assert ("EXPIRES_AT=0\n" in text) if fmt == "env" else ('"expires_at": 0,' in text and "1970-01-01T00:00:00Z" in text)


# ------------------------------------------------------------------ bounded answers


def test_a_content_length_above_the_cap_is_refused_before_the_body_is_read() -> None:
    """A 200 MB answer announced by Content-Length is refused as malformed, and the server could push only what socket buffers hold."""
    head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200000000\r\n\r\n"
    client = client_for()
    with RawServer(stream(head, bytes(64 * 1024), 200_000_000)) as server:
        with pytest.raises(MalformedAnswer, match="Content-Length above the 1 MiB limit") as caught:
            client.refresh(account_at(server.url), Secret("rt"))
        assert server.done.wait(30)
    client.session.close()
    assert caught.value.refresh_token is None
    assert server.hung_up and server.sent < 64 * MiB


@pytest.mark.parametrize(
    "head",
    [
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",  # ends when the server closes
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",  # endless chunks
    ],
    ids=["close-delimited", "chunked"],
)
def test_an_endless_answer_is_cut_at_the_cap(head: str) -> None:
    """A 300 MB answer without a length, plain or chunked, is refused past 1 MiB with little memory, and the server is hung up on."""
    piece = b'{"a": "' + b"x" * 65536 + b'"}'
    if "chunked" in head:
        piece = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    client = client_for()
    with RawServer(stream(head, piece, 300_000_000)) as server:
        tracemalloc.start()
        try:
            with pytest.raises(MalformedAnswer, match="more than 1 MiB"):
                client.refresh(account_at(server.url), Secret("rt"))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert server.done.wait(30)
    client.session.close()
    assert peak < 16 * MiB
    assert server.hung_up and server.sent < 64 * MiB


@functools.cache
def bomb(encoding: str, decoded_mib: int = 256) -> bytes:
    """`decoded_mib` MiB of zeros compressed about 1000:1, built from one repeated full-flush deflate block in well under a second."""
    zeros = bytes(MiB)
    squeezer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = squeezer.compress(zeros) + squeezer.flush(zlib.Z_FULL_FLUSH)  # byte-aligned, no reference to earlier data
    deflated = block * decoded_mib + zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()
    crc, adler = 0, 1
    for _ in range(decoded_mib):
        crc, adler = zlib.crc32(zeros, crc), zlib.adler32(zeros, adler)
    if encoding == "gzip":
        size = (decoded_mib * MiB) % 2**32
        return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + deflated + crc.to_bytes(4, "little") + size.to_bytes(4, "little")
    if encoding == "deflate":
        return b"\x78\xda" + deflated + adler.to_bytes(4, "big")
    return deflated  # raw deflate, which some servers send as "deflate"


@pytest.mark.parametrize(("encoding", "header"), [("gzip", "gzip"), ("deflate", "deflate"), ("raw", "deflate")])
def test_a_compression_bomb_is_refused_past_the_decoded_cap_with_bounded_memory(encoding: str, header: str) -> None:
    """A ~256 KB answer inflating to 256 MiB (gzip, zlib or raw deflate) is refused once 1 MiB is decoded; peak memory stays small."""
    payload = bomb(encoding)
    assert len(payload) < MAX_ANSWER
    head = f"Content-Type: application/json\r\nContent-Encoding: {header}\r\n"
    client = client_for()
    with RawServer(json_answer(payload, headers=head)) as server:
        tracemalloc.start()
        try:
            with pytest.raises(MalformedAnswer, match="more than 1 MiB once decompressed") as caught:
                client.refresh(account_at(server.url), Secret("rt"))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    client.session.close()
    assert caught.value.refresh_token is None
    assert peak < 16 * MiB


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_small_compressed_answer_is_read(encoding: str) -> None:
    """A gzip or deflate token answer within the cap decodes and parses as usual, and asks for no other encoding."""
    document = b'{"access_token": "A2", "expires_in": 60, "refresh_token": "R2"}'
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    squeezer = zlib.compressobj(6, zlib.DEFLATED, wbits)
    payload = squeezer.compress(document) + squeezer.flush()
    client = client_for()
    with RawServer(json_answer(payload, headers=f"Content-Type: application/json\r\nContent-Encoding: {encoding}\r\n")) as server:
        result = client.refresh(account_at(server.url), Secret("rt"))
    client.session.close()
    assert result.access.access_token == Secret("A2") and result.refresh_token == Secret("R2")
    assert request_header(server.requests[0], "Accept-Encoding") == "gzip, deflate"


@pytest.mark.parametrize("encoding", ["br", "gzip, gzip", "compress"])
def test_an_encoding_freshtoken_did_not_ask_for_is_a_malformed_answer(encoding: str) -> None:
    """An answer in brotli, nested gzip or another unasked-for encoding is refused as malformed, not guessed at."""
    client = client_for()
    with RawServer(json_answer(b"xx", headers=f"Content-Type: application/json\r\nContent-Encoding: {encoding}\r\n")) as server:
        with pytest.raises(MalformedAnswer, match="unsupported Content-Encoding"):
            client.refresh(account_at(server.url), Secret("rt"))
    client.session.close()


def test_an_oversized_error_answer_is_classified_by_its_status() -> None:
    """A 2 MB 503 page is not read whole: it is still a TemporaryError saying the answer was too big."""
    client = client_for()
    with RawServer(
        json_answer(b"<html>" + b"x" * (2 * MiB), status="503 Service Unavailable", headers="Content-Type: text/html\r\n")
    ) as server:
        with pytest.raises(TemporaryError, match="HTTP 503") as caught:
            client.refresh(account_at(server.url), Secret("rt"))
    client.session.close()
    assert type(caught.value) is TemporaryError


# ------------------------------------------------------------------ the total deadline

GOOD = b'{"access_token": "A2", "expires_in": 60}'
GOOD_HEAD = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(GOOD)}\r\n\r\n".encode()


def test_timeouts_default_their_total_to_connect_plus_read() -> None:
    """Timeouts(connect, read) keeps its positional form; the total deadline defaults to their sum and can be set."""
    assert Timeouts(2, 3).deadline == 5
    assert Timeouts(connect=2, read=3, total=4).deadline == 4
    assert Timeouts().deadline == 40


@pytest.mark.parametrize(
    ("head", "body"),
    [(GOOD_HEAD[:17] + b"X-Slow: " + b"." * 300 + b"\r\n" + GOOD_HEAD[17:], GOOD), (GOOD_HEAD, b" " * 300 + GOOD)],
    ids=["headers", "body"],
)
def test_a_trickling_answer_is_cut_at_the_total_deadline(head: bytes, body: bytes) -> None:
    """A server sending a byte every 50 ms (well inside the 1 s read timeout) is hung up on at the 0.2 s deadline, long before it ends."""
    client = client_for(Timeouts(connect=1.0, read=1.0, total=0.2))
    with RawServer(trickle(head, body)) as server:
        with pytest.raises(TemporaryError, match=r"no complete answer within 0\.2s \(127\.0\.0\.1:\d+\)"):
            client.refresh(account_at(server.url), Secret("rt"))
        assert server.done.wait(30)
    client.session.close()
    assert server.hung_up
    assert server.sent < len(head + body)  # 300+ bytes at 50 ms each would take 15 s


def test_the_deadline_also_covers_a_kept_alive_connection() -> None:
    """After a quick answer, the next request on the same kept-alive connection is still cut at its deadline."""
    head = GOOD_HEAD[:17] + b"X-Slow: " + b"." * 300 + b"\r\n" + GOOD_HEAD[17:]
    client = client_for(Timeouts(connect=1.0, read=1.0, total=0.5))
    with RawServer(json_answer(GOOD), trickle(head, GOOD)) as server:
        first = client.refresh(account_at(server.url), Secret("rt"))
        with pytest.raises(TemporaryError, match="no complete answer within 0.5s"):
            client.refresh(account_at(server.url), Secret("rt"))
        assert server.done.wait(30)
    client.session.close()
    assert first.access.access_token == Secret("A2")
    assert server.connections == 1 and server.hung_up


def test_a_short_deadline_after_a_long_one_still_fires() -> None:
    """A request with a 0.2 s deadline is cut in time even right after one with a 60 s deadline (the watchdog is woken for it)."""
    patient, hasty = client_for(Timeouts(connect=1.0, read=1.0, total=60)), client_for(Timeouts(connect=1.0, read=1.0, total=0.2))
    head = GOOD_HEAD[:17] + b"X-Slow: " + b"." * 300 + b"\r\n" + GOOD_HEAD[17:]
    with RawServer(json_answer(GOOD)) as quick, RawServer(trickle(head, GOOD)) as slow:
        patient.refresh(account_at(quick.url), Secret("rt"))
        with pytest.raises(TemporaryError, match="no complete answer within 0.2s"):
            hasty.refresh(account_at(slow.url), Secret("rt"))
        assert slow.done.wait(30)
    patient.session.close()
    hasty.session.close()
    assert slow.hung_up


def test_a_quick_answer_is_not_cut_by_a_later_deadline() -> None:
    """Requests that finish in time are unaffected by the watchdog, however many run back to back on one connection."""
    client = client_for(Timeouts(connect=1.0, read=1.0, total=30))
    with RawServer(*[json_answer(GOOD)] * 20) as server:
        results = [client.refresh(account_at(server.url), Secret("rt")) for _ in range(20)]
    client.session.close()
    assert all(r.access.access_token == Secret("A2") for r in results)
    assert server.connections == 1


# ------------------------------------------------------------------ secrets in every encoding, server text cleaned

CLIENT_SECRET = "s3cr:et/+&=x ü%"
REFRESH_TOKEN = "rt/with+special=chars&more ~"
CODE = "code/+=&é"


def echo(transform: Callable[[bytes], str]) -> Answer:
    """A 400 whose error_description is the request transformed by `transform`; then the connection closes."""

    def answer(server: RawServer, conn: socket.socket, request: bytes) -> bool:
        document = {"error": "invalid_request", "error_description": transform(request)}
        headers = "Content-Type: application/json\r\nConnection: close\r\n"
        json_answer(json.dumps(document).encode(), status="400 Bad Request", headers=headers)(server, conn, request)
        return False

    return answer


def reencoded(request: bytes) -> str:
    return urlencode(parse_qsl(request_body(request)), quote_via=quote)  # %20 where requests sent +


ECHOES: list[tuple[str, Callable[[bytes], str]]] = [
    ("body as sent", request_body),
    ("body lower-case escapes", lambda r: request_body(r).lower()),
    ("body re-encoded with %20", reencoded),
    ("body decoded", lambda r: " ".join(f"{k}={v}" for k, v in parse_qsl(request_body(r)))),
    ("authorization header", lambda r: request_header(r, "Authorization")),
    ("basic pair decoded", lambda r: base64.b64decode(request_header(r, "Authorization")[6:] or b"").decode()),
]


def forms(secret: str) -> list[str]:
    return [secret, quote_plus(secret), quote(secret, safe=""), quote_plus(secret).lower(), quote(secret, safe="").lower()]


COMBINATIONS = [(auth, name, transform) for auth in ("basic", "post") for name, transform in ECHOES if auth == "basic" or "body" in name]


@pytest.mark.parametrize(("client_auth", "name", "transform"), COMBINATIONS, ids=[f"{c[0]}-{c[1]}" for c in COMBINATIONS])
def test_an_echoed_secret_is_redacted_in_every_encoding(client_auth: str, name: str, transform: Callable[[bytes], str]) -> None:
    """With basic or post client auth, a server echoing the request back in any encoding gets no secret or refresh token into the error."""
    client = client_for()
    with RawServer(echo(transform)) as server:
        with pytest.raises(RefreshFailed) as caught:
            client.refresh(account_at(server.url, client_secret=Secret(CLIENT_SECRET), client_auth=client_auth), Secret(REFRESH_TOKEN))
    client.session.close()
    message = str(caught.value)
    pair = f"{quote_plus(DEMO_CLIENT_ID)}:{quote_plus(CLIENT_SECRET)}"
    assert "<redacted>" in message, message
    for leaked in [*forms(CLIENT_SECRET), *forms(REFRESH_TOKEN), base64.b64encode(pair.encode()).decode()]:
        assert leaked not in message, (name, leaked)
        assert leaked.lower() not in message.lower(), (name, leaked)


def test_an_echoed_code_and_verifier_are_redacted() -> None:
    """A code exchange answered by an echo of its form body shows neither the code nor the PKCE verifier, in any encoding."""
    verifier = "verifier-" + "v" * 40
    client = client_for()
    with RawServer(echo(request_body)) as server:
        with pytest.raises(RefreshFailed) as caught:
            client.exchange_code(account_at(server.url, client_auth="post"), CODE, "http://127.0.0.1:1/cb", verifier)
    client.session.close()
    for leaked in [*forms(CODE), verifier, *forms(DEMO_CLIENT_SECRET)]:
        assert leaked.lower() not in str(caught.value).lower()


FORGED = "x\n2031-01-01 12:00:00 INFO freshtoken: refreshed account=bank\x1b[2J\x1b]0;owned\x07\u202e\u2028"


def test_server_text_in_an_error_is_printable_and_bounded() -> None:
    """error and error_description with newlines, ANSI and OSC escapes, bidi overrides and 100 KB of text give one short printable line."""
    client = client_for()
    with AuthServer() as server:
        server.script(400, json={"error": FORGED * 10, "error_description": FORGED + "y" * 100_000, "scope": FORGED})
        with pytest.raises(RefreshFailed) as caught:
            client.refresh(account_at(server.token_url), Secret("rt"))
    client.session.close()
    message = str(caught.value)
    assert message.isprintable() and len(message) < 400
    assert "refreshed account=bank" in message  # still shown, as text on the same line


def test_scope_and_token_type_of_a_success_are_cleaned(client: TokenClient) -> None:
    """A successful answer's scope and token_type are stored printable and bounded, with no echoed secret."""
    document = {"access_token": "A2", "token_type": FORGED + "t" * 1000, "scope": f"read {DEMO_CLIENT_SECRET} " + FORGED * 1000}
    result = answer_with(client, json.dumps(document).encode())
    assert result.access.token_type.isprintable() and len(result.access.token_type) <= 41
    assert result.access.scope is not None and result.access.scope.isprintable() and len(result.access.scope) <= 4097
    assert result.access.scope.startswith("read <redacted> x 2031")
    assert DEMO_CLIENT_SECRET not in result.access.scope


def test_clean_server_text_redacts_every_form_strips_control_characters_and_bounds_length() -> None:
    """clean_server_text: each hidden value in any encoding becomes <redacted>; control characters become spaces; the result is capped."""
    hidden = ["p@ss word/+", ""]
    text = "a p@ss word/+ b p%40ss+word%2F%2B c p%40ss%20word%2f%2b d \x1b[31mred\x1b[0m\nnext"
    assert clean_server_text(text, 200, hidden) == "a <redacted> b <redacted> c <redacted> d  [31mred [0m next"
    assert clean_server_text("é" * 50, 10) == "é" * 10 + "…"
    assert clean_server_text("plain", 10) == "plain"


def test_an_echoing_server_leaves_no_secret_in_last_error_or_status(write_config: Callable[..., Path]) -> None:
    """`refresh` with client_auth post against a server echoing the form body stores and shows only <redacted> forms."""
    path = write_config(
        """\
        state_dir: {state}
        token_dir: {tokens}
        accounts:
          demo:
            token_url: {url}
            client_id: {client_id}
            client_secret: "{secret}"
            client_auth: post
            refresh_token: "{seed}"
        """,
        url="{url}",
        client_id=DEMO_CLIENT_ID,
        secret=CLIENT_SECRET,
        seed=REFRESH_TOKEN,
    )
    with RawServer(echo(request_body), echo(reencoded)) as server:
        path.write_text(path.read_text().replace("{url}", server.url))
        printed = [run_cli("-c", str(path), "refresh"), run_cli("-c", str(path), "refresh")]
    printed += [run_cli("-c", str(path), "status"), run_cli("-c", str(path), "status", "--json")]
    last_error = json.loads((path.parent / "state" / "demo.json").read_text())["last_error"]
    assert [code for code, _ in printed] == [1, 1, 0, 0]
    assert "<redacted>" in last_error
    text = last_error + "".join(output for _, output in printed)
    for leaked in [*forms(CLIENT_SECRET), *forms(REFRESH_TOKEN)]:
        assert leaked.lower() not in text.lower(), leaked


def run_cli(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), environ=dict(os.environ), stdout=out, stderr=err)
    return code, out.getvalue() + err.getvalue()


def test_clean_server_text_shows_no_part_of_a_secret_echoed_many_times() -> None:
    """However many times a long secret is echoed, and wherever the text is cut, no piece of it shows: only the head is searched, safely."""
    secret = "S3CRET/+" * 8
    for repeat in range(60):
        for pad in range(12):
            shown = clean_server_text("y" * pad + secret * repeat, 50, [secret])
            assert "S3C" not in shown, (repeat, pad, shown)
            assert "S3C" not in clean_server_text(quote_plus(secret) * repeat, 200, [secret])
