"""Loopback SMTP and IMAP servers that accept only SASL XOAUTH2 / OAUTHBEARER with the expected bearer token.

Just enough of each protocol for msmtp, neomutt and mbsync to authenticate (and, for SMTP, to send
one message). Each server records every bearer exchange it saw, so a test can assert which
mechanism a real mail client used, for which user, with which token. No TLS: loopback only.
"""

from __future__ import annotations

import base64
import binascii
import socketserver
import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Exchange:
    mechanism: str  # XOAUTH2 or OAUTHBEARER
    user: str | None
    token: str | None
    accepted: bool


def parse_bearer(mechanism: str, payload: bytes) -> tuple[str | None, str | None]:
    """(user, token) from an XOAUTH2 or OAUTHBEARER initial response (already base64-decoded).

    XOAUTH2:     user=U ^A auth=Bearer T ^A ^A        (developers.google.com xoauth2-protocol)
    OAUTHBEARER: n,a=U, ^A host=H ^A port=P ^A auth=Bearer T ^A ^A   (RFC 7628)
    """
    text = payload.decode("utf-8", "replace")
    fields = text.split("\x01")
    user = token = None
    if mechanism == "OAUTHBEARER":
        gs2 = fields[0].split(",")
        user = next((part[2:] for part in gs2 if part.startswith("a=")), None)
    for item in fields:
        if mechanism == "XOAUTH2" and item.startswith("user="):
            user = item[5:]
        elif item.startswith("auth="):
            scheme, _, value = item[5:].partition(" ")
            token = value if scheme.lower() == "bearer" else None
    if not text.endswith("\x01\x01"):
        token = None  # a malformed exchange is not a token we accept
    return user, token


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Fake:
    """The shared half: a threaded loopback server with an expected token and a log of exchanges."""

    handler: type[socketserver.StreamRequestHandler]

    def __init__(self, token: str) -> None:
        self.token = token
        self.exchanges: list[Exchange] = []
        self.messages: list[bytes] = []
        self.lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), self.handler)
        self.server.fake = self  # type: ignore[attr-defined]
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> Any:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def check(self, mechanism: str, data: bytes) -> bool:
        try:
            payload = base64.b64decode(data.strip(), validate=True)
        except (binascii.Error, ValueError):
            payload = b""
        user, token = parse_bearer(mechanism, payload)
        accepted = token == self.token
        with self.lock:
            self.exchanges.append(Exchange(mechanism, user, token, accepted))
        return accepted


MECHANISMS = ("XOAUTH2", "OAUTHBEARER")
_FAILURE = base64.b64encode(b'{"status":"401","schemes":"bearer","scope":"mail"}')  # what Gmail answers


class _SmtpHandler(socketserver.StreamRequestHandler):
    def say(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        fake: SmtpFake = self.server.fake  # type: ignore[attr-defined]
        self.say("220 localhost ESMTP fake")
        authenticated = False
        while line := self.rfile.readline():
            words = line.decode("utf-8", "replace").strip().split(" ")
            verb = words[0].upper()
            if verb in ("EHLO", "HELO"):
                self.say("250-localhost")
                self.say(f"250-AUTH {' '.join(fake.mechanisms)}")
                self.say("250 8BITMIME")
            elif verb == "AUTH" and len(words) >= 2 and words[1].upper() in fake.mechanisms:
                mechanism = words[1].upper()
                if len(words) > 2:
                    data = words[2].encode()
                else:
                    self.say("334 ")
                    data = self.rfile.readline()
                if fake.check(mechanism, data):
                    authenticated = True
                    self.say("235 2.7.0 Authentication successful")
                else:
                    self.say(f"334 {_FAILURE.decode()}")  # the client answers with an empty line, then fails
                    self.rfile.readline()
                    self.say("535 5.7.8 Username and Password not accepted")
            elif verb == "AUTH":
                self.say("504 5.5.4 Unrecognized authentication type")
            elif verb in ("MAIL", "RCPT"):
                self.say("250 OK" if authenticated else "530 5.7.0 Authentication required")
            elif verb == "DATA" and authenticated:
                self.say("354 go ahead")
                body = b""
                while (chunk := self.rfile.readline()) and chunk.rstrip(b"\r\n") != b".":
                    body += chunk
                with fake.lock:
                    fake.messages.append(body)
                self.say("250 OK queued")
            elif verb == "QUIT":
                self.say("221 bye")
                return
            else:
                self.say("250 OK")


class SmtpFake(_Fake):
    """An ESMTP server offering AUTH `mechanisms`; it accepts mail only after a bearer exchange with `token`."""

    handler = _SmtpHandler

    def __init__(self, token: str, mechanisms: tuple[str, ...] = MECHANISMS) -> None:
        self.mechanisms = mechanisms
        super().__init__(token)


class _ImapHandler(socketserver.StreamRequestHandler):
    def say(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        fake: ImapFake = self.server.fake  # type: ignore[attr-defined]
        capabilities = "IMAP4rev1 SASL-IR LOGINDISABLED " + " ".join(f"AUTH={m}" for m in MECHANISMS)
        self.say(f"* OK [CAPABILITY {capabilities}] fake ready")
        while line := self.rfile.readline():
            words = line.decode("utf-8", "replace").strip().split(" ")
            if len(words) < 2:
                self.say("* BAD no tag")
                continue
            tag, command = words[0], words[1].upper()
            if command == "CAPABILITY":
                self.say(f"* CAPABILITY {capabilities}")
                self.say(f"{tag} OK CAPABILITY completed")
            elif command == "AUTHENTICATE" and len(words) >= 3 and words[2].upper() in MECHANISMS:
                if len(words) > 3:
                    data = words[3].encode()
                else:
                    self.say("+ ")
                    data = self.rfile.readline()
                if fake.check(words[2].upper(), data):
                    self.say(f"{tag} OK AUTHENTICATE completed")
                else:
                    self.say(f"+ {_FAILURE.decode()}")
                    self.rfile.readline()
                    self.say(f"{tag} NO [AUTHENTICATIONFAILED] Invalid credentials")
            elif command in ("AUTHENTICATE", "LOGIN"):
                self.say(f"{tag} NO unsupported")
            elif command == "LOGOUT":
                self.say("* BYE logging out")
                self.say(f"{tag} OK LOGOUT completed")
                return
            elif command == "NAMESPACE":
                self.say('* NAMESPACE (("" "/")) NIL NIL')
                self.say(f"{tag} OK NAMESPACE completed")
            elif command in ("LIST", "LSUB"):
                self.say(f'* {command} (\\HasNoChildren) "/" INBOX')
                self.say(f"{tag} OK {command} completed")
            elif command in ("SELECT", "EXAMINE"):
                self.say("* 0 EXISTS")
                self.say("* 0 RECENT")
                self.say("* OK [UIDVALIDITY 1] UIDs valid")
                self.say("* OK [UIDNEXT 1] next UID")
                self.say(f"{tag} OK [READ-WRITE] {command} completed")
            else:
                self.say(f"{tag} OK {command} completed")


class ImapFake(_Fake):
    """An IMAP server with only AUTHENTICATE XOAUTH2/OAUTHBEARER (LOGIN is disabled) and an empty INBOX."""

    handler = _ImapHandler
