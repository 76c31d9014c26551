"""Token-endpoint HTTP. The only module that imports requests.

Sends the grants, authenticates the client, reads answers with a size cap and a
total deadline, range-checks what they say, and sorts failures into
TemporaryError / MalformedAnswer / InvalidGrant / RefreshFailed. Messages carry
the status and the OAuth `error`/`error_description`, cleaned, never a body or a secret.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import re
import secrets
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from freshtoken import __version__
from freshtoken.errors import InvalidGrant, MalformedAnswer, RefreshFailed, TemporaryError
from freshtoken.model import AccessToken, Account, ClientAuth, Secret, TokenResponse
from freshtoken.model import Timeouts as Timeouts  # here since before model held it: pacing and daemon import it from oauth
from freshtoken.timing import DEFAULT_LIFETIME, parse_retry_after, retry_after_capped

log = logging.getLogger(__name__)

USER_AGENT = f"freshtoken/{__version__} (+https://github.com/freshtoken/freshtoken)"
TEMPORARY_CODES = {"server_error", "temporarily_unavailable", "slow_down"}
# Codes that mean "this grant is dead, log in again", beyond RFC 6749's invalid_grant: GitHub answers a spent or
# expired refresh token with bad_refresh_token and a used code with bad_verification_code (both with HTTP 200).
BeforeSend = Callable[[], "float | None"]  # see TokenClient.refresh

INVALID_GRANT_CODES = {"invalid_grant", "bad_refresh_token", "bad_verification_code"}
INVALID_CLIENT_CODES = {"invalid_client", "incorrect_client_credentials"}  # the second is GitHub's
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"  # RFC 8628 §3.4
# Answers to a device-code poll that the login loop acts on itself (RFC 8628 §3.5, plus Microsoft's
# authorization_declined and bad_verification_code and GitHub's incorrect_device_code).
DEVICE_CODES = {
    "authorization_pending",
    "slow_down",
    "access_denied",
    "authorization_declined",
    "expired_token",
    "bad_verification_code",
    "incorrect_device_code",
}
MAX_DEVICE_WAIT = 86400.0  # a device code said to live longer than a day is not a plan either
ASSUMED_LIFETIME = DEFAULT_LIFETIME  # when a server leaves out expires_in (RFC 6749 lets it), or says more than a year
MAX_LIFETIME = 365 * 86400  # an access token said to live longer is a unit mistake (ms), not a plan
MAX_REFRESH_LIFETIME = 10 * 365 * 86400
MAX_ANSWER = 1024 * 1024  # a token answer is a few KB; the cap holds for the raw and the decoded body
_PIECE = 64 * 1024


@dataclass(frozen=True, slots=True)
class DeviceCode:
    """A device authorization answer (RFC 8628 §3.2), checked: what to show the user and what to poll with."""

    device_code: Secret
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float | None  # None: the server did not say (the client waits 5 s)


@dataclass(frozen=True, slots=True)
class DevicePending:
    """A device-code poll that got no token: the OAuth error code (one of DEVICE_CODES), its cleaned description,
    and the new interval a slow_down may carry (GitHub sends one)."""

    error: str
    description: str | None = None
    interval: float | None = None


def make_session(pool_size: int = 4) -> requests.Session:
    """A session with keep-alive, TLS verification, no hidden retries, and sockets the deadline can reach.

    urllib3's own retries would stack under our backoff and spend a rotated
    refresh token twice; freshtoken's scheduler is the only place that retries.
    """
    session = requests.Session()
    adapter = _WatchedAdapter(max_retries=0, pool_connections=pool_size, pool_maxsize=pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    # Only what _read_capped can decode with a bound (brotli or zstd, when installed, would be offered too).
    session.headers["Accept-Encoding"] = "gzip, deflate"
    session.verify = True
    session.trust_env = True  # proxies and REQUESTS_CA_BUNDLE from the environment are the user's to set
    return session


class TokenClient:
    def __init__(
        self,
        session: requests.Session | None = None,
        timeouts: Timeouts = Timeouts(),  # noqa: B008  # frozen: one shared default is safe
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.session = session or make_session()
        self.timeouts = timeouts
        self.clock = clock

    # ------------------------------------------------------------ grants

    def refresh(self, account: Account, refresh_token: Secret, *, before_send: BeforeSend | None = None) -> TokenResponse:
        """`before_send()` runs right before the request leaves and may bound it (see statestore.StateTransaction.before_send)."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token.reveal()}
        return self._request(account, form, secrets_in_play=[refresh_token], before_send=before_send)

    def client_credentials(self, account: Account, *, before_send: BeforeSend | None = None) -> TokenResponse:
        form = {"grant_type": "client_credentials"}
        if account.scopes:
            form["scope"] = " ".join(account.scopes)
        return self._request(account, form, before_send=before_send)

    def exchange_code(self, account: Account, code: str, redirect_uri: str, code_verifier: str | None) -> TokenResponse:
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        in_play = [Secret(code)]
        if code_verifier:
            form["code_verifier"] = code_verifier
            in_play.append(Secret(code_verifier))
        return self._request(account, form, secrets_in_play=in_play)

    def device_authorization(self, account: Account) -> DeviceCode:
        """Ask the device authorization endpoint for a device and user code (RFC 8628 §3.1).

        The client authenticates with Basic when it uses Basic; otherwise only client_id
        is sent, as Microsoft, Google and GitHub document this request (client_id and scope).
        """
        url = account.device_authorization_url
        if not url:
            raise RefreshFailed(f"{account.name}: no device_authorization_url (set it, or use a provider preset that has one)")
        form = {"scope": " ".join(account.scopes)} if account.scopes else {}
        answer = self._post(url, account, form, basic_only=True)
        body = answer.body
        if 200 <= answer.status < 300 and isinstance(body, dict) and not isinstance(body.get("error"), str):
            return parse_device_code(body, answer.hidden)
        if 200 <= answer.status < 300 and answer.unreadable is None and not isinstance(body, dict):
            raise MalformedAnswer(f"HTTP {answer.status} from the device authorization endpoint, but not JSON ({answer.kind})")
        self._interpret(answer, account.name)  # raises: an error answer, or an unreadable one
        raise MalformedAnswer(f"HTTP {answer.status} from the device authorization endpoint without a device code")

    def poll_device(self, account: Account, device_code: Secret) -> TokenResponse | DevicePending:
        """One poll of the token endpoint for a device code (RFC 8628 §3.4): the grant, or why not yet / not at all.

        The error code decides, whatever the status: Google answers authorization_pending
        with 428 and slow_down with 403, GitHub every error with 200.
        """
        form = {"grant_type": DEVICE_GRANT, "device_code": device_code.reveal()}
        answer = self._post(account.token_url, account, form, secrets_in_play=[device_code])
        body = answer.body
        error = body.get("error") if isinstance(body, dict) and "access_token" not in body else None
        if isinstance(error, str) and error in DEVICE_CODES:
            description = body.get("error_description") if isinstance(body, dict) else None
            return DevicePending(
                error=error,
                description=clean_server_text(description, 200, answer.hidden) if isinstance(description, str) and description else None,
                interval=_positive_seconds(body.get("interval")) if isinstance(body, dict) else None,
            )
        return self._interpret(answer, account.name)

    def revoke(self, account: Account, token: Secret, hint: str = "refresh_token") -> None:
        """Revoke `token` at the account's revocation_url (RFC 7009 §2.1) with the client's own authentication.

        200 is success whatever the body (§2.2: an unknown token is not an error), and so is Google's
        400 invalid_token (the token is dead already). Raises TemporaryError or RefreshFailed otherwise.
        """
        if not account.revocation_url:
            raise RefreshFailed(f"{account.name}: no revocation_url")
        form = {"token": token.reveal(), "token_type_hint": hint}
        answer = self._post(account.revocation_url, account, form, secrets_in_play=[token])
        error = answer.body.get("error") if isinstance(answer.body, dict) else None
        if 200 <= answer.status < 300 or error == "invalid_token":
            return
        if isinstance(error, str):
            self._interpret(answer, account.name)  # raises, classified by the OAuth error code
        if answer.status in (408, 429) or answer.status >= 500:
            retry_after = _retry_after(answer.headers.get("Retry-After"), now=self.clock())
            raise TemporaryError(f"HTTP {answer.status} ({answer.kind})", retry_after=retry_after)
        raise RefreshFailed(f"HTTP {answer.status} without an OAuth error ({answer.kind}); check revocation_url")

    # ------------------------------------------------------------ transport

    def _request(
        self, account: Account, form: dict[str, str], secrets_in_play: Iterable[Secret] = (), before_send: BeforeSend | None = None
    ) -> TokenResponse:
        answer = self._post(account.token_url, account, form, secrets_in_play=secrets_in_play, before_send=before_send)
        return self._interpret(answer, account.name)

    def _post(
        self,
        url: str,
        account: Account,
        form: dict[str, str],
        *,
        secrets_in_play: Iterable[Secret] = (),
        basic_only: bool = False,
        before_send: BeforeSend | None = None,
    ) -> _Answer:
        """POST `form` with the client's authentication; the answer read under the size cap and the total deadline."""
        # GitHub answers form-encoded unless asked for JSON; servers that ignore Accept are read either way.
        headers = {"Accept": "application/json"}
        form = dict(form)
        secret = account.client_secret.reveal() if account.client_secret else None
        hidden = [s.reveal() for s in secrets_in_play] + account.secrets()
        if account.client_auth == ClientAuth.BASIC and secret is not None:
            # RFC 6749 §2.3.1: form-encode id and secret before base64.
            pair = f"{quote_plus(account.client_id)}:{quote_plus(secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
            hidden += [headers["Authorization"][6:], base64.b64encode(f"{account.client_id}:{secret}".encode()).decode()]
        elif account.client_auth == ClientAuth.POST and secret is not None and not basic_only:
            form["client_id"] = account.client_id
            form["client_secret"] = secret
        else:
            form["client_id"] = account.client_id
        host = _host(url)
        # Everything the answer's handling needs is prepared before the request goes out: from the answer's
        # last byte to a parsed TokenResponse is the window in which a kill loses a rotated refresh token.
        redaction = Redaction(hidden)
        deadline, connect = self.timeouts.deadline, self.timeouts.connect
        budget = before_send() if before_send is not None else None  # last: nothing may come between it and the send
        if budget is not None:
            if budget <= 0:
                raise TemporaryError(f"no time left to send the request ({host}); not sent")
            deadline, connect = min(deadline, budget), min(connect, budget)
        started = self.clock()
        watch = _WATCHDOG.start(deadline)
        response: requests.Response | None = None
        complete = False
        try:
            try:
                response = self.session.post(
                    url,
                    data=form,
                    headers=headers,
                    timeout=(connect, self.timeouts.read),
                    allow_redirects=False,
                    stream=True,  # read by _read_capped, never whole
                    auth=_headers_as_given,  # else requests takes credentials from ~/.netrc over ours
                )
                _WATCHDOG.add(watch, _socket_of(response))  # the headers are in; a session of our own covered them too
                try:
                    body, unreadable = _read_capped(response, MAX_ANSWER, redaction), None
                    complete = True
                except _Unreadable as exc:
                    body, unreadable = b"", str(exc)
            finally:
                _WATCHDOG.stop(watch)
                # An answer read whole is used even if the deadline passed meanwhile: a process frozen (SIGSTOP,
                # a VM pause) while the answer arrived wakes up past its deadline, and that answer may hold the only
                # copy of a rotated refresh token. The deadline is for answers that do not come, not for this one.
                if watch.expired and not complete:
                    raise TemporaryError(f"no complete answer within {deadline:g}s ({host})") from None
        except requests.Timeout as exc:
            kind = "connecting" if isinstance(exc, requests.ConnectTimeout) else "waiting for an answer"
            raise TemporaryError(f"timed out {kind} ({host})") from None
        except urllib3.exceptions.ReadTimeoutError:
            raise TemporaryError(f"timed out waiting for an answer ({host})") from None
        except (requests.exceptions.SSLError, urllib3.exceptions.SSLError):
            raise TemporaryError(f"TLS verification failed for {host}") from None
        except requests.ConnectionError as exc:
            raise TemporaryError(f"cannot reach {host}: {_connection_reason(exc)}") from None
        except urllib3.exceptions.ProtocolError as exc:
            raise TemporaryError(f"cannot reach {host}: {_connection_reason(exc)}") from None
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise TemporaryError(f"request to {host} failed: {type(exc).__name__}") from None
        finally:
            if response is not None:
                response.close()  # after a complete read the connection is already back in the pool
        decoded = None if unreadable else _decode(response.headers, body)
        return _Answer(response.status_code, response.headers, decoded, body, unreadable, started, redaction)

    def _interpret(self, answer: _Answer, account: str) -> TokenResponse:
        status, body, unreadable, hidden = answer.status, answer.body, answer.unreadable, answer.hidden
        if 200 <= status < 300:
            if unreadable:
                raise MalformedAnswer(f"HTTP {status} answer refused: {unreadable}")
            if not isinstance(body, dict):
                raise MalformedAnswer(f"HTTP {status} but the answer is not JSON ({answer.kind})")
            if "access_token" in body or not isinstance(body.get("error"), str):
                # The success path: nothing else (Retry-After, content kind) is worked out before the token is handed on.
                return parse_token_response(body, now=answer.started, hidden=hidden, account=account)
            # Some servers (GitHub among them) send OAuth errors with 200: the error code decides.
        retry_after = _retry_after(answer.headers.get("Retry-After"), now=self.clock())
        error = body.get("error") if isinstance(body, dict) else None
        description = body.get("error_description") if isinstance(body, dict) else None
        if not isinstance(error, str):
            error = None  # e.g. Spotify Web API's {"error": {"status": ..., "message": ...}}: no OAuth code
        detail = f"HTTP {status}"
        if error:
            error = clean_server_text(error, 60, hidden)
            detail += f" {error}"
            if isinstance(description, str) and description:
                detail += f": {clean_server_text(description, 200, hidden)}"
        if status in (408, 429) or status >= 500 or error in TEMPORARY_CODES:
            raise TemporaryError(detail, retry_after=retry_after)
        if 300 <= status < 400:
            raise RefreshFailed(f"{detail}: the token endpoint redirected; check token_url")
        if error in INVALID_GRANT_CODES:
            raise InvalidGrant(detail)
        if error in INVALID_CLIENT_CODES or status == 401:
            raise RefreshFailed(f"{detail} (check client_id and the client secret)")
        if not error:
            raise RefreshFailed(f"{detail} without an OAuth error ({answer.kind}); check token_url")
        raise RefreshFailed(detail)


@dataclass(frozen=True, slots=True)
class _Answer:
    """An answer read whole: status, headers, the decoded body (a JSON value or a form's dict, else None)."""

    status: int
    headers: Any
    body: Any
    content: bytes  # the body as read, for `kind`
    unreadable: str | None
    started: float
    hidden: Redaction

    @property
    def kind(self) -> str:
        """The content type as shown in messages, or why the body was not read: only error messages need it."""
        return self.unreadable or _content_kind(self.headers, self.content)


def parse_device_code(body: dict[str, Any], hidden: Redaction | Iterable[str] = ()) -> DeviceCode:
    """Check a device authorization answer; MalformedAnswer names the field at fault.

    Google names the page `verification_url`; Microsoft and GitHub send no
    verification_uri_complete; node-oidc-provider sends no interval.
    """
    device_code = body.get("device_code")
    user_code = body.get("user_code")
    uri = body.get("verification_uri", body.get("verification_url"))
    complete = body.get("verification_uri_complete")
    if not isinstance(device_code, str) or not device_code:
        raise MalformedAnswer("malformed device authorization answer: no device_code")
    if not isinstance(user_code, str) or not user_code or len(user_code) > 64 or not user_code.isprintable():
        raise MalformedAnswer("malformed device authorization answer: no usable user_code")
    if not _is_web_url(uri):
        raise MalformedAnswer("malformed device authorization answer: verification_uri is not an http(s) URL")
    lifetime = _positive_seconds(body.get("expires_in"))
    if "expires_in" in body and lifetime is None:
        shown = clean_server_text(str(body.get("expires_in")), 40, hidden)
        raise MalformedAnswer(f"malformed device authorization answer: expires_in {shown} is not a positive number of seconds")
    interval = _positive_seconds(body.get("interval"))
    expires_in = min(lifetime or 900.0, MAX_DEVICE_WAIT)  # RFC 8628 requires expires_in; 15 min is what most servers give
    return DeviceCode(
        device_code=Secret(device_code),
        user_code=user_code,
        verification_uri=str(uri),
        verification_uri_complete=str(complete) if _is_web_url(complete) else None,
        expires_in=expires_in,
        interval=min(interval, expires_in) if interval is not None else None,
    )


def _is_web_url(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 2048 and value.isprintable() and re.match(r"https?://[^\s/]+", value) is not None


def parse_token_response(body: dict[str, Any], *, now: float, hidden: Redaction | Iterable[str] = (), account: str = "") -> TokenResponse:
    """Validate a 2xx JSON answer, leniently where real servers differ, strictly about numbers.

    expires_in absent: ASSUMED_LIFETIME. Present but not a finite positive number:
    MalformedAnswer carrying the answer's refresh token (the old one may be spent).
    Above MAX_LIFETIME: ASSUMED_LIFETIME with a warning, never longer than the server said.
    """
    refresh_token = body.get("refresh_token")
    rotated = Secret(refresh_token) if isinstance(refresh_token, str) and refresh_token else None
    access_token = body.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise MalformedAnswer("malformed answer: no access_token in a successful response", refresh_token=rotated)
    raw_type = body.get("token_type")
    token_type = "Bearer" if not isinstance(raw_type, str) or raw_type.lower() == "bearer" else clean_server_text(raw_type, 40, hidden)
    raw_lifetime = body.get("expires_in")
    if raw_lifetime is None:
        lifetime = float(ASSUMED_LIFETIME)
    else:
        seconds = _positive_seconds(raw_lifetime)
        if seconds is None:
            shown = clean_server_text(str(raw_lifetime), 40, hidden)
            raise MalformedAnswer(f"malformed answer: expires_in {shown} is not a positive number of seconds", refresh_token=rotated)
        lifetime = seconds
        if lifetime > MAX_LIFETIME:
            shown = clean_server_text(str(raw_lifetime), 40, hidden)
            log.warning("%s: the server says expires_in %s, more than a year; assuming %.0fs", account or "token", shown, ASSUMED_LIFETIME)
            lifetime = float(ASSUMED_LIFETIME)
    scope = body.get("scope")
    rt_lifetime = _positive_seconds(body.get("refresh_token_expires_in"))
    if rt_lifetime is not None and rt_lifetime > MAX_REFRESH_LIFETIME:
        rt_lifetime = None  # not a sane number: the refresh token's expiry stays unknown
    return TokenResponse(
        access=AccessToken(
            access_token=Secret(access_token),
            token_type=token_type,
            expires_at=now + lifetime,
            scope=clean_server_text(scope, 4096, hidden) if isinstance(scope, str) else None,
        ),
        refresh_token=rotated,
        refresh_token_expires_at=now + rt_lifetime if rt_lifetime is not None else None,
    )


class Redaction:
    """The forms of the secrets in play, worked out once, before the request is sent.

    Each value's forms (see _encodings), longest first so that a literal inside a
    longer encoded form does not break it up, each with its ASCII-folded twin.
    """

    __slots__ = ("forms", "longest")

    def __init__(self, values: Iterable[str] = ()) -> None:
        forms = sorted({form for value in values if value for form in _encodings(value)}, key=len, reverse=True)
        self.forms = [(form, form.translate(_ASCII_LOWER)) for form in forms]
        self.longest = len(forms[0]) if forms else 1


def clean_server_text(text: str, limit: int, hidden: Redaction | Iterable[str] = ()) -> str:
    """A server's words, made safe to show, log or store: no secret, printable characters only, at most `limit` long.

    Each hidden value is redacted as sent literally, form-encoded, percent-encoded
    and base64-encoded, in any letter case (servers re-encode %2f as %2F). Control
    characters, ANSI escapes and line breaks become spaces, so no log line can be forged.
    """
    redaction = hidden if isinstance(hidden, Redaction) else Redaction(hidden)
    # Only the head is shown, so only the head is searched (a 1 MiB description took 0.3 s). A redaction leaves
    # 10 characters, so text past this window can never move up into the first `limit`, nor be a cut secret there.
    text = text[: limit + (limit // 10 + 2) * redaction.longest]
    for form, folded in redaction.forms:
        text = _replace_ascii_nocase(text, form, "<redacted>", folded)
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text[:limit] + ("…" if len(text) > limit else "")


# ---------------------------------------------------------------- authorization requests (login)


def make_pkce() -> tuple[str, str]:
    """(verifier, S256 challenge) per RFC 7636: 43+ unreserved characters."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return verifier, challenge


def authorize_url(account: Account, redirect_uri: str, state: str, code_challenge: str | None) -> str:
    """The URL the user opens; built locally, no request to the provider."""
    if not account.authorize_url:
        raise RefreshFailed(f"{account.name}: no authorize_url (set it, or use a provider preset)")
    params = {"response_type": "code", "client_id": account.client_id, "redirect_uri": redirect_uri, "state": state}
    params.update(account.authorize_params)  # e.g. Google's access_type=offline, prompt=consent (config refuses our own names)
    if account.scopes:
        params["scope"] = " ".join(account.scopes)
    if code_challenge:
        params["code_challenge"] = code_challenge
        params["code_challenge_method"] = "S256"
    if account.show_dialog:
        params["show_dialog"] = "true"
    separator = "&" if "?" in account.authorize_url else "?"
    # quote, not quote_plus: %20 between scopes, which every server reads the same way
    return account.authorize_url + separator + urlencode(params, quote_via=quote)


# ---------------------------------------------------------------- bounded answers


class _Unreadable(Exception):
    """An answer freshtoken will not read to the end (too big, an encoding it did not ask for, corrupt)."""


def _read_capped(response: requests.Response, limit: int, hidden: Redaction) -> bytes:
    """The body, decoded by us piece by piece, refused as soon as either the raw or the decoded size passes `limit`.

    urllib3 before 2.6 inflates a whole compressed piece at once (a 300 KB gzip
    bomb is 300 MB), so the decoding happens here, with zlib's max_length.
    """
    length = response.headers.get("Content-Length", "").strip()
    expected = -1  # the raw size the server announced, if any
    if length.isascii() and length.isdigit():
        if len(length) > 15 or int(length) > limit:
            raise _Unreadable(f"Content-Length above the {_size(limit)} limit")
        expected = int(length)
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
        raise _Unreadable(f"unsupported Content-Encoding {clean_server_text(encoding, 40, hidden)}")
    inflater: Any = None  # zlib's decompress object has no public type
    taken = 0
    body = bytearray()
    while piece := response.raw.read(_PIECE, decode_content=False):
        taken += len(piece)
        if taken > limit:
            raise _Unreadable(f"more than {_size(limit)}")
        if encoding in ("", "identity"):
            body += piece
            if taken == expected:
                break  # all announced bytes are in: one more read only costs time (urllib3 ends the body the same way)
            continue
        if inflater is None:
            inflater = zlib.decompressobj(_wbits(encoding, piece))
        try:
            # max_length > 0 always (0 would mean unbounded); short of it, zlib has used all the input.
            body += inflater.decompress(piece, limit - len(body) + 1)
        except zlib.error:
            raise _Unreadable(f"corrupt {encoding} data") from None
        if len(body) > limit:
            raise _Unreadable(f"more than {_size(limit)} once decompressed")
    return bytes(body)


def _wbits(encoding: str, first: bytes) -> int:
    if encoding != "deflate":
        return 16 + zlib.MAX_WBITS  # gzip
    # RFC 9110's deflate is zlib-wrapped; some servers send raw deflate, told apart by the zlib header check.
    wrapped = len(first) < 2 or (first[0] & 0x0F == 8 and int.from_bytes(first[:2], "big") % 31 == 0)
    return zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS


def _size(limit: int) -> str:
    return f"{limit / 1048576:g} MiB" if limit >= 1048576 else f"{limit} bytes"


# ---------------------------------------------------------------- the total deadline


class _Watch:
    """One request's deadline and the sockets it has used."""

    __slots__ = ("deadline", "sockets", "expired")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.sockets: list[socket.socket] = []
        self.expired = False


class _Watchdog:
    """One thread that shuts the sockets of requests past their total deadline.

    A per-read timeout does not bound a request: a server sending a byte every
    few seconds keeps every read alive. Shutting the socket down (not closing it,
    which could free the fd for reuse under the reading thread) makes the blocked
    read return at once, in any phase: TLS handshake, headers or body. The thread
    sleeps without a timeout while no request is in flight, and a request wakes
    it only when its deadline comes before the one it sleeps until (a wake per
    request cost every refresh a GIL hand-over, ~0.3 ms).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._watches: set[_Watch] = set()
        self._thread: threading.Thread | None = None
        self._wake_at = math.inf
        self._local = threading.local()

    def start(self, seconds: float) -> _Watch:
        watch = _Watch(time.monotonic() + seconds)
        with self._cond:
            self._watches.add(watch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="freshtoken-deadline", daemon=True)
                self._thread.start()
            if watch.deadline < self._wake_at:
                self._cond.notify()
        self._local.watch = watch
        return watch

    def stop(self, watch: _Watch) -> None:
        self._local.watch = None
        with self._cond:
            self._watches.discard(watch)
            watch.sockets.clear()

    def add(self, watch: _Watch | None, sock: socket.socket | None) -> None:
        if watch is None or sock is None:
            return
        with self._cond:
            if watch.expired:
                _shut(sock)
            elif watch in self._watches and sock not in watch.sockets:
                watch.sockets.append(sock)

    def add_current(self, sock: socket.socket | None) -> None:
        """Watch `sock` for the request this thread is making, if any."""
        self.add(getattr(self._local, "watch", None), sock)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for watch in [w for w in self._watches if w.deadline <= now]:
                    watch.expired = True
                    self._watches.discard(watch)
                    for sock in watch.sockets:
                        _shut(sock)
                    watch.sockets.clear()
                self._wake_at = min((w.deadline for w in self._watches), default=math.inf)
                self._cond.wait(None if self._wake_at == math.inf else max(0.0, self._wake_at - now))


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: nothing left to stop


_WATCHDOG = _Watchdog()


def _socket_of(response: requests.Response) -> socket.socket | None:
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    return sock if isinstance(sock, socket.socket) else None


class _WatchedHTTPConnection(HTTPConnection):
    """Registers its socket with the deadline of the request this thread is making: new, or kept alive."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _WATCHDOG.add_current(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        if self.sock is not None:
            _WATCHDOG.add_current(self.sock)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(_WatchedHTTPConnection, HTTPSConnection):
    """The same for TLS: the MRO puts the watching in front of HTTPSConnection's own connect."""


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections the deadline watchdog can shut, direct or through an HTTP proxy."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS pools have connections of their own: body phase only
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


# ---------------------------------------------------------------- helpers


def _headers_as_given(request: requests.PreparedRequest) -> requests.PreparedRequest:
    return request


def _positive_seconds(value: Any) -> float | None:
    """A server's seconds as a finite positive float (huge values kept huge but finite), else None.

    Numbers and strings of digits count (some servers send "3600"); booleans,
    NaN, infinities, zero, negatives and junk do not.
    """
    if isinstance(value, str):
        if len(value) > 32 or not re.fullmatch(r"\s*\d+(\.\d+)?\s*", value, flags=re.ASCII):
            return None
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 < value < math.inf:  # NaN fails both; a 400-digit int compares fine where float() would overflow
        return None
    return float(min(value, 1e15))


def _retry_after(value: str | None, *, now: float) -> float | None:
    try:
        return retry_after_capped(parse_retry_after(value, now=now))
    except (ArithmeticError, ValueError):  # an HTTP date with a year or zone no calendar holds
        return None


def _encodings(value: str) -> set[str]:
    """The forms a secret travels in: literal, form- and percent-encoded, and base64 (alone)."""
    return {value, quote_plus(value), quote(value, safe=""), quote(value), base64.b64encode(value.encode()).decode()}


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _replace_ascii_nocase(text: str, old: str, new: str, needle: str | None = None) -> str:
    """str.replace ignoring ASCII letter case (%2F and %2f), with no regex to compile: each rotated token is a new pattern.

    Only ASCII is folded: str.lower() may change a string's length and so its indexes.
    """
    folded = text.translate(_ASCII_LOWER)
    if needle is None:
        needle = old.translate(_ASCII_LOWER)
    if needle not in folded:
        return text
    parts, start = [], 0
    while (found := folded.find(needle, start)) >= 0:
        parts += [text[start:found], new]
        start = found + len(needle)
    return "".join(parts) + text[start:]


def _decode(headers: Any, content: bytes) -> Any:
    """The body as JSON, or as a form for a form-encoded answer (GitHub's default), else None."""
    body = _json_or_none(content)
    if body is None and headers.get("Content-Type", "").split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(content.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
        except (ValueError, UnicodeDecodeError):
            return None
        return dict(pairs) if pairs else None
    return body


def _json_or_none(content: bytes) -> Any:
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: a few thousand nested brackets
        return None


def _content_kind(headers: Any, content: bytes) -> str:
    kind = clean_server_text(headers.get("Content-Type", "").split(";")[0].strip(), 60) or "no content type"
    if kind == "application/json" or content[:1] in (b"{", b"["):
        return f"{kind}, truncated or invalid"
    return kind


def _host(url: str) -> str:
    match = re.match(r"[a-z]+://([^/?#]+)", url)
    host = match.group(1) if match else url
    return host.rsplit("@", 1)[-1]  # never echo userinfo from a URL


def _connection_reason(exc: BaseException) -> str:
    text = str(exc)
    for marker, reason in (
        ("Connection refused", "connection refused"),
        ("Name or service not known", "unknown host"),
        ("Temporary failure in name resolution", "DNS lookup failed"),
        ("Connection reset", "connection reset"),
        ("RemoteDisconnected", "server closed the connection"),
        ("Network is unreachable", "network unreachable"),
        ("IncompleteRead", "the answer was cut short"),
    ):
        if marker in text:
            return reason
    return "connection failed"
