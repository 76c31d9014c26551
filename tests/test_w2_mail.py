"""Real mail clients read the current token through `freshtoken get` and send it in XOAUTH2 / OAUTHBEARER (issue 12).

Each test runs the Debian package's binary against a loopback fake from mailfakes.py; the token
comes from a real token dir written by `freshtoken refresh` against the loopback authorization server.
CI installs the binaries (.ci/install-test-deps.sh); elsewhere a missing one skips its test.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from freshtoken import cli
from mailfakes import ImapFake, SmtpFake, parse_bearer

USER = "someone@example.com"
TIMEOUT = 30  # bounds a hung client only; each run takes well under a second


def needs(binary: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which(binary) is None, reason=f"{binary} is not installed (CI installs it: .ci/install-test-deps.sh)")


@pytest.fixture
def token_dir(demo_config: Path, dirs: dict[str, Path]) -> Path:
    """A token dir holding `demo`'s current token, refreshed twice so that a stale first token would be caught."""
    for _ in range(2):
        out, err = io.StringIO(), io.StringIO()
        assert 0 == cli.main(["-c", str(demo_config), "refresh", "demo"], environ=dict(os.environ), stdout=out, stderr=err), err.getvalue()
    return dirs["tokens"]


def current_token(token_dir: Path) -> str:
    token: str = json.loads((token_dir / "demo.json").read_text())["access_token"]
    return token


def client(binary: str, *args: str, input: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed mail client `binary` (found on PATH by the skip marker) with ARGS and `input` on stdin."""
    path = shutil.which(binary)
    assert path is not None
    return subprocess.run([path, *args], input=input, capture_output=True, text=True, timeout=TIMEOUT, env=env)


def get_command(token_dir: Path) -> str:
    """The shell command a reader runs for the token: `freshtoken get demo` (this checkout's, reading this token dir)."""
    return shlex.join([sys.executable, "-m", "freshtoken", "get", "demo", "--token-dir", str(token_dir)])


def private(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chmod(path, 0o600)  # msmtp and mbsync refuse a config others can read
    return path


# ---------------------------------------------------------------- the fakes themselves


@pytest.mark.parametrize(
    ("mechanism", "payload"),
    [
        ("XOAUTH2", f"user={USER}\x01auth=Bearer T0k\x01\x01"),
        ("OAUTHBEARER", f"n,a={USER},\x01host=127.0.0.1\x01port=25\x01auth=Bearer T0k\x01\x01"),
    ],
)
def test_bearer_exchanges_are_parsed_as_the_specs_write_them(mechanism: str, payload: str) -> None:
    """The fakes read user and token from Google's XOAUTH2 string and RFC 7628's OAUTHBEARER string."""
    assert (USER, "T0k") == parse_bearer(mechanism, payload.encode())
    assert (USER, None) == parse_bearer(mechanism, payload[:-1].encode())  # unterminated: refused


# ---------------------------------------------------------------- msmtp: passwordeval


@needs("msmtp")
@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_msmtp_sends_the_current_token_from_freshtoken_get(token_dir: Path, tmp_path: Path, mechanism: str) -> None:
    """msmtp with `auth xoauth2|oauthbearer` and `passwordeval "freshtoken get ACCOUNT"` authenticates with the current token."""
    token = current_token(token_dir)
    with SmtpFake(token, mechanisms=(mechanism,)) as smtp:
        rc = private(
            tmp_path / "msmtprc",
            f"""\
account fake
host 127.0.0.1
port {smtp.port}
tls off
from {USER}
user {USER}
auth {mechanism.lower()}
passwordeval "{get_command(token_dir)}"
""",
        )
        message = f"From: {USER}\nTo: friend@example.com\nSubject: hi\n\nsent with a fresh token\n"
        run = client("msmtp", "-C", str(rc), "-a", "fake", "friend@example.com", input=message)
    assert 0 == run.returncode, run.stderr
    assert [(mechanism, USER, token, True)] == [(e.mechanism, e.user, e.token, e.accepted) for e in smtp.exchanges]
    assert b"sent with a fresh token" in smtp.messages[0]


@needs("msmtp")
def test_msmtp_with_a_stale_token_is_refused_by_the_fake(token_dir: Path, tmp_path: Path) -> None:
    """The fake really checks: a server expecting another token refuses msmtp, which then fails."""
    with SmtpFake("not-the-current-token", mechanisms=("XOAUTH2",)) as smtp:
        rc = private(
            tmp_path / "msmtprc",
            f"account fake\nhost 127.0.0.1\nport {smtp.port}\ntls off\nfrom {USER}\nuser {USER}\nauth xoauth2\n"
            f'passwordeval "{get_command(token_dir)}"\n',
        )
        run = client("msmtp", "-C", str(rc), "-a", "fake", "friend@example.com", input="Subject: x\n\nx\n")
    assert 0 != run.returncode
    assert [current_token(token_dir)] == [e.token for e in smtp.exchanges]
    assert [] == smtp.messages


# ---------------------------------------------------------------- neomutt: smtp_oauth_refresh_command (batch send)


@needs("neomutt")
@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_neomutt_sends_the_current_token_from_freshtoken_get(token_dir: Path, tmp_path: Path, mechanism: str) -> None:
    """neomutt's `smtp_oauth_refresh_command` (the same hook as imap_oauth_refresh_command) passes freshtoken's token on."""
    token = current_token(token_dir)
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "TERM": "dumb"}  # no ~/.neomuttrc of the developer's
    with SmtpFake(token, mechanisms=(mechanism,)) as smtp:
        rc = private(
            tmp_path / "neomuttrc",
            f"""\
set from = "{USER}"
set smtp_url = "smtp://{USER}@127.0.0.1:{smtp.port}/"
set smtp_authenticators = "{mechanism.lower()}"
set smtp_oauth_refresh_command = "{get_command(token_dir)}"
set ssl_starttls = no
set ssl_force_tls = no
set copy = no
set record = ""
""",
        )
        run = client("neomutt", "-n", "-F", str(rc), "-s", "hi", "friend@example.com", input="sent with a fresh token\n", env=env)
    assert 0 == run.returncode, run.stderr + run.stdout
    assert [(mechanism, USER, token, True)] == [(e.mechanism, e.user, e.token, e.accepted) for e in smtp.exchanges]
    assert b"sent with a fresh token" in smtp.messages[0]


# ---------------------------------------------------------------- mbsync: PassCmd + AuthMechs XOAUTH2


def _has_xoauth2_sasl_plugin() -> bool:
    for directory in ("/usr/lib/x86_64-linux-gnu/sasl2", "/usr/lib/aarch64-linux-gnu/sasl2", "/usr/lib/sasl2"):
        if Path(directory).is_dir() and any("xoauth2" in name for name in os.listdir(directory)):
            return True
    return False


@needs("mbsync")
@pytest.mark.skipif(not _has_xoauth2_sasl_plugin(), reason="no XOAUTH2 Cyrus SASL plugin (Debian: libsasl2-modules-kdexoauth2)")
def test_mbsync_sends_the_current_token_from_freshtoken_get(token_dir: Path, tmp_path: Path) -> None:
    """mbsync with `AuthMechs XOAUTH2` and `PassCmd "freshtoken get ACCOUNT"` authenticates to IMAP with the current token."""
    token = current_token(token_dir)
    mail = tmp_path / "mail"
    mail.mkdir()
    with ImapFake(token) as imap:
        rc = private(
            tmp_path / "mbsyncrc",
            f"""\
IMAPAccount fake
Host 127.0.0.1
Port {imap.port}
User {USER}
PassCmd "{get_command(token_dir)}"
AuthMechs XOAUTH2
SSLType None

IMAPStore fake-remote
Account fake

MaildirStore local
Path {mail}/
Inbox {mail}/INBOX

Channel fake
Far :fake-remote:
Near :local:
Patterns INBOX
Create Near
""",
        )
        run = client("mbsync", "-c", str(rc), "fake")
    assert [("XOAUTH2", USER, token, True)] == [(e.mechanism, e.user, e.token, e.accepted) for e in imap.exchanges], run.stderr
    assert 0 == run.returncode, run.stderr


# ---------------------------------------------------------------- curl: the header on stdin, not the token in argv


@needs("curl")
def test_curl_reads_the_authorization_header_from_freshtoken_get_on_stdin(token_dir: Path) -> None:
    """`freshtoken get ACCOUNT --format header | curl -H @- URL` sends the current token, which never appears in curl's argv."""
    import http.server
    import threading

    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok\n")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        get = subprocess.run([*shlex.split(get_command(token_dir)), "--format", "header"], capture_output=True, text=True, timeout=TIMEOUT)
        url = f"http://127.0.0.1:{server.server_address[1]}/me"
        run = client("curl", "-sSf", "--noproxy", "*", "-H", "@-", url, input=get.stdout)
    finally:
        server.shutdown()
        server.server_close()
    assert 0 == run.returncode, run.stderr
    assert [f"Bearer {current_token(token_dir)}"] == seen
