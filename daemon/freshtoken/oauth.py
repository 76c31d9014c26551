"""Token-endpoint HTTP. The only module that imports requests.

Sends the grants, authenticates the client, reads answers leniently, and sorts
failures into TemporaryError / InvalidGrant / RefreshFailed. Messages carry the
status and the OAuth `error`/`error_description`, never a body or a secret.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus, urlencode

import requests
from requests.adapters import HTTPAdapter

from freshtoken import __version__
from freshtoken.config import Account
from freshtoken.errors import InvalidGrant, RefreshFailed, TemporaryError
from freshtoken.model import AccessToken, Secret, TokenResponse
from freshtoken.timing import parse_retry_after, retry_after_capped

USER_AGENT = f"freshtoken/{__version__} (+https://github.com/freshtoken/freshtoken)"
TEMPORARY_CODES = {"server_error", "temporarily_unavailable", "slow_down"}
ASSUMED_LIFETIME = 3600  # when a server leaves out expires_in (RFC 6749 lets it)


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 10.0
    read: float = 30.0


def make_session(pool_size: int = 4) -> requests.Session:
    """A session with keep-alive, TLS verification and no hidden retries.

    urllib3's own retries would stack under our backoff and spend a rotated
    refresh token twice; freshtoken's scheduler is the only place that retries.
    """
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=0, pool_connections=pool_size, pool_maxsize=pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    session.verify = True
    session.trust_env = True  # proxies and REQUESTS_CA_BUNDLE from the environment are the user's to set
    return session


class TokenClient:
    def __init__(
        self,
        session: requests.Session | None = None,
        timeouts: Timeouts = Timeouts(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.session = session or make_session()
        self.timeouts = timeouts
        self.clock = clock

    # ------------------------------------------------------------ grants

    def refresh(self, account: Account, refresh_token: Secret) -> TokenResponse:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token.reveal()}
        return self._request(account, form, secrets_in_play=[refresh_token])

    def client_credentials(self, account: Account) -> TokenResponse:
        form = {"grant_type": "client_credentials"}
        if account.scopes:
            form["scope"] = " ".join(account.scopes)
        return self._request(account, form)

    def exchange_code(self, account: Account, code: str, redirect_uri: str, code_verifier: str | None) -> TokenResponse:
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        if code_verifier:
            form["code_verifier"] = code_verifier
        return self._request(account, form, secrets_in_play=[Secret(code)])

    # ------------------------------------------------------------ transport

    def _request(self, account: Account, form: dict[str, str], secrets_in_play: Iterable[Secret] = ()) -> TokenResponse:
        headers = {"Accept": "application/json"}
        form = dict(form)
        secret = account.client_secret.reveal() if account.client_secret else None
        if account.client_auth == "basic" and secret is not None:
            # RFC 6749 §2.3.1: form-encode id and secret before base64.
            pair = f"{quote_plus(account.client_id or '')}:{quote_plus(secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        elif account.client_auth == "post" and secret is not None:
            form["client_id"] = account.client_id or ""
            form["client_secret"] = secret
        else:
            form["client_id"] = account.client_id or ""
        hidden = [s.reveal() for s in secrets_in_play] + account.secrets()
        started = self.clock()
        try:
            response = self.session.post(
                account.token_url,
                data=form,
                headers=headers,
                timeout=(self.timeouts.connect, self.timeouts.read),
                allow_redirects=False,
                auth=_headers_as_given,  # else requests takes credentials from ~/.netrc over ours
            )
        except requests.Timeout as exc:
            kind = "connecting" if isinstance(exc, requests.ConnectTimeout) else "waiting for an answer"
            raise TemporaryError(f"timed out {kind} ({_host(account.token_url)})") from None
        except requests.exceptions.SSLError:
            raise TemporaryError(f"TLS verification failed for {_host(account.token_url)}") from None
        except requests.ConnectionError as exc:
            raise TemporaryError(f"cannot reach {_host(account.token_url)}: {_connection_reason(exc)}") from None
        except requests.RequestException as exc:
            raise TemporaryError(f"request to {_host(account.token_url)} failed: {type(exc).__name__}") from None
        return self._interpret(response, started, hidden)

    def _interpret(self, response: requests.Response, started: float, hidden: list[str]) -> TokenResponse:
        status = response.status_code
        body = _json_or_none(response)
        retry_after = retry_after_capped(parse_retry_after(response.headers.get("Retry-After"), now=self.clock()))
        if 200 <= status < 300:
            if not isinstance(body, dict):
                raise TemporaryError(f"HTTP {status} but the answer is not JSON ({_content_kind(response)})")
            if "access_token" in body or not isinstance(body.get("error"), str):
                return parse_token_response(body, now=started)
            # Some servers (GitHub among them) send OAuth errors with 200: the error code decides.
        error = body.get("error") if isinstance(body, dict) else None
        description = body.get("error_description") if isinstance(body, dict) else None
        if not isinstance(error, str):
            error = None  # e.g. Spotify Web API's {"error": {"status": ..., "message": ...}}: no OAuth code
        detail = f"HTTP {status}"
        if error:
            detail += f" {_clean(error, hidden, 60)}"
            if isinstance(description, str) and description:
                detail += f": {_clean(description, hidden, 200)}"
        if status in (408, 429) or status >= 500 or error in TEMPORARY_CODES:
            raise TemporaryError(detail, retry_after=retry_after)
        if 300 <= status < 400:
            raise RefreshFailed(f"{detail}: the token endpoint redirected; check token_url")
        if error == "invalid_grant":
            raise InvalidGrant(detail)
        if error == "invalid_client" or status == 401:
            raise RefreshFailed(f"{detail} (check client_id and the client secret)")
        if not error:
            raise RefreshFailed(f"{detail} without an OAuth error ({_content_kind(response)}); check token_url")
        raise RefreshFailed(detail)


def parse_token_response(body: dict[str, Any], *, now: float) -> TokenResponse:
    """Validate a 2xx JSON answer, leniently where real servers differ."""
    access_token = body.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise TemporaryError("malformed answer: no access_token in a successful response")
    raw_type = body.get("token_type")
    token_type = "Bearer" if not isinstance(raw_type, str) or raw_type.lower() == "bearer" else raw_type
    lifetime = _seconds(body.get("expires_in"))
    if lifetime is None:
        lifetime = ASSUMED_LIFETIME
    scope = body.get("scope")
    refresh_token = body.get("refresh_token")
    rt_lifetime = _seconds(body.get("refresh_token_expires_in"))
    return TokenResponse(
        access=AccessToken(
            access_token=Secret(access_token),
            token_type=token_type,
            expires_at=now + lifetime,
            scope=scope if isinstance(scope, str) else None,
        ),
        refresh_token=Secret(refresh_token) if isinstance(refresh_token, str) and refresh_token else None,
        refresh_token_expires_at=now + rt_lifetime if rt_lifetime else None,
        obtained_at=now,
    )


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
    params = {"response_type": "code", "client_id": account.client_id or "", "redirect_uri": redirect_uri, "state": state}
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


# ---------------------------------------------------------------- helpers


def _headers_as_given(request: requests.PreparedRequest) -> requests.PreparedRequest:
    return request


def _seconds(value: Any) -> float | None:
    """expires_in as a number, or as a string of digits (some servers send that)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and value > 0:
        return float(value)
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
        return float(value) or None
    return None


def _json_or_none(response: requests.Response) -> Any:
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None


def _content_kind(response: requests.Response) -> str:
    kind = response.headers.get("Content-Type", "").split(";")[0].strip() or "no content type"
    if kind == "application/json" or response.content[:1] in (b"{", b"["):
        return f"{kind}, truncated or invalid"
    return kind


def _clean(text: str, hidden: list[str], limit: int) -> str:
    """A server's words, made safe to log: no secrets echoed back, no control characters, bounded."""
    for secret in hidden:
        if secret:
            text = text.replace(secret, "<redacted>")
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text[:limit] + ("…" if len(text) > limit else "")


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
    ):
        if marker in text:
            return reason
    return "connection failed"
