"""`freshtoken demo`: the real daemon against the built-in loopback authorization server.

Everything lives in a temporary directory that is removed at exit (the output says so); no account anywhere is needed.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import tempfile
import threading
from pathlib import Path
from typing import IO

from freshtoken import config as config_module
from freshtoken.daemon import Daemon
from freshtoken.demoserver import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DemoServer
from freshtoken.model import Config, OutputFormat
from freshtoken.outputs import all_outputs
from freshtoken.units import this_command

log = logging.getLogger(__name__)

CONFIG = """\
# Written by `freshtoken demo`; the same keys work against Spotify or any OAuth 2.0 server.
# ${{DEMO_CLIENT_SECRET}} and ${{DEMO_REFRESH_TOKEN}} are set by the demo for its own daemon only: `status` and
# `get` need neither; commands that send requests (refresh, check-config) exit 78 without them.
state_dir: {root}/state
token_dir: {root}/tokens
backoff_max: 10s
min_refresh_interval: {floor}s    # the 10s default floor would hold back the demo's short tokens
accounts:
  demo:                     # refresh-token grant; the server rotates the refresh token every time
    token_url: {token_url}
    client_id: {client_id}
    client_secret: ${{DEMO_CLIENT_SECRET}}
    refresh_token: ${{DEMO_REFRESH_TOKEN}}
    outputs:
      - path: {root}/tokens/demo.header
        format: header
  demo-app:                 # client-credentials grant: no user, no refresh token
    token_url: {token_url}
    grant: client_credentials
    client_id: {client_id}
    client_secret: ${{DEMO_CLIENT_SECRET}}
"""


def render_config(root: Path, token_url: str, lifetime: float) -> str:
    """The demo's config for a server at `token_url` that issues tokens living `lifetime` seconds."""
    # Short tokens are refreshed every half-life or so: keep the floor between two refreshes well below that.
    floor = max(1, min(5, int(lifetime // 4)))
    return CONFIG.format(root=root, token_url=token_url, client_id=DEMO_CLIENT_ID, floor=floor)


def demo(*, duration: float | None, lifetime: float, out: IO[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="freshtoken-demo-") as tmp:
        code = _run(Path(tmp), duration=duration, lifetime=lifetime, out=out)
    print(f"freshtoken demo: removed {tmp}", file=out, flush=True)
    return code


def _run(root: Path, *, duration: float | None, lifetime: float, out: IO[str]) -> int:
    with DemoServer(token_lifetime=lifetime) as server:
        path = root / "freshtoken.yaml"
        path.write_text(render_config(root, server.token_url, lifetime))
        os.chmod(path, 0o600)
        environ = {
            **os.environ,
            "DEMO_CLIENT_SECRET": DEMO_CLIENT_SECRET,
            "DEMO_REFRESH_TOKEN": server.issue_refresh_token(DEMO_CLIENT_ID, scope="demo"),
        }
        environ.pop("NOTIFY_SOCKET", None)  # the demo is not the service systemd started
        config = config_module.load(path, environ)
        daemon = Daemon(config, config_loader=lambda: config_module.load(path, environ), environ=environ)
        # The full path: a second shell, where the user tries these, need not have this venv on its PATH.
        command = shlex.quote(this_command())
        files = [output.path for account in config.accounts.values() for output in all_outputs(config.token_dir, account)]
        print(
            f"freshtoken demo: a loopback authorization server at {server.url} issues {lifetime:g}s tokens\n"
            f"  dir:     {root} (temporary: removed, tokens and all, when the demo exits)\n"
            f"  config:  {path}\n"
            f"  tokens:  {config.token_dir}/demo.token, demo.json, demo.header, demo-app.token, demo-app.json\n"
            f"  try:     {command} get demo --token-dir {config.token_dir}\n"
            f"           {command} -c {path} status\n"
            f"  signals: kill -USR1 {os.getpid()} refreshes now, kill -HUP reloads, Ctrl-C stops\n",
            file=out,
            flush=True,
        )
        if duration is not None:
            timer = threading.Timer(duration, lambda: daemon.request_stop(f"--duration {duration:g}s elapsed"))
            timer.daemon = True
            timer.start()
        code = daemon.run()
        # Every file the tokens line lists, each read in its own format: that is what a reader would get.
        valid = sum(server.is_valid_access_token(token) for token in _tokens_in(config))
        print(
            f"\nfreshtoken demo: the server issued {server.tokens_issued} access tokens "
            f"({server.refreshes_ok} by refresh token, each rotating it), saw {server.reuse_count} reuses of a spent "
            f"refresh token; {valid} of {len(files)} token files valid at the end",
            file=out,
            flush=True,
        )
        return code


def _tokens_in(config: Config) -> list[str]:
    """The access token each output file of each account holds now (a missing or unreadable file: none)."""
    tokens = []
    for account in config.accounts.values():
        for output in all_outputs(config.token_dir, account):
            try:
                text = output.path.read_text().strip()
                if output.format == OutputFormat.JSON:
                    text = json.loads(text)["access_token"]
                elif output.format == OutputFormat.HEADER:
                    text = text.partition("Bearer ")[2]
                elif output.format == OutputFormat.ENV:
                    text = text.splitlines()[0].partition("=")[2]
            except (OSError, ValueError, KeyError, IndexError):
                continue
            tokens.append(text)
    return tokens
