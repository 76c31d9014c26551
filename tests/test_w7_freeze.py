"""A process frozen (SIGSTOP) while its token answer arrives keeps that answer: it may hold the only rotated refresh token."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

CLIENT = """
from freshtoken.model import Account, Secret
from freshtoken.oauth import Timeouts, TokenClient
client = TokenClient(timeouts=Timeouts(1, 1))  # a 2 s deadline for the whole request
account = Account(name="x", token_url={url!r}, client_id="c", client_secret=Secret("s"))
try:
    print("got", client.refresh(account, Secret("R1")).refresh_token.reveal())
except Exception as exc:
    print("lost", exc)
"""


class Server:
    """Answers one token request with a rotated refresh token, only when told, and says when the answer is written."""

    def __init__(self) -> None:
        self.received, self.answer, self.written = threading.Event(), threading.Event(), threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.set()
                outer.answer.wait(60)
                body = json.dumps({"access_token": "AT", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "R2"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                outer.written.set()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"


@pytest.fixture
def server() -> Iterator[Server]:
    server = Server()
    thread = threading.Thread(target=server.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.mark.slow
def test_an_answer_that_arrived_during_a_freeze_past_the_deadline_is_kept(server: Server) -> None:
    """Frozen from the request to 3 s after the answer was written (deadline 2 s), the client still returns the rotated token."""
    with subprocess.Popen([sys.executable, "-c", CLIENT.format(url=server.url)], stdout=subprocess.PIPE, text=True) as child:
        assert server.received.wait(60)
        os.kill(child.pid, signal.SIGSTOP)
        server.answer.set()
        assert server.written.wait(60)
        # The child is stopped: no wait here races it. Its deadline (2 s, CLOCK_MONOTONIC) passes meanwhile.
        threading.Event().wait(3)
        os.kill(child.pid, signal.SIGCONT)
        out, _ = child.communicate(timeout=60)
    assert out.strip() == "got R2"
