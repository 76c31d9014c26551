"""Shared state in PostgreSQL end to end: config, the refresh transaction across hosts, NOTIFY, templates, the commands.

Every test runs against the private PostgreSQL cluster (tests/pgcluster.py) and the loopback
authorization server, which rotates refresh tokens and revokes the whole grant on reuse: a
refresh token spent twice shows up as `reuse_count`.
"""

# ruff: noqa: F811  (pytest fixtures imported from pgcluster are parameters here)

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install '.[postgres]')")

from fakes import poll  # noqa: E402
from freshtoken import config as config_module  # noqa: E402
from freshtoken.claims import Claimer  # noqa: E402
from freshtoken.cli import main  # noqa: E402
from freshtoken.errors import ConfigError, TemporaryError  # noqa: E402
from freshtoken.model import Account, Config, Secret  # noqa: E402
from freshtoken.oauth import BeforeSend, TokenClient  # noqa: E402
from freshtoken.pgstore import PgStore  # noqa: E402
from freshtoken.refresh import Refresher, RefreshPolicy  # noqa: E402
from freshtoken.statestore import open_store  # noqa: E402
from freshtoken.testing import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AuthServer  # noqa: E402
from pgcluster import PgCluster, pg_cluster, pg_dsn  # noqa: E402, F401  (fixtures)

CONFIG = """\
state_dir: {tmp}/{host}/state
token_dir: {tmp}/{host}/tokens
shared_state: "{dsn}"
min_refresh_interval: 1s
accounts:
{accounts}
"""
ACCOUNT = """\
  {name}:
    token_url: {token_url}
    client_id: {client_id}
    client_secret: {secret}
    refresh_token: {seed}
"""


@pytest.fixture
def server() -> Iterator[AuthServer]:
    with AuthServer(token_lifetime=3600) as server:
        yield server


def write_config(tmp_path: Path, host: str, dsn: str, server: AuthServer, seeds: dict[str, str], extra: str = "") -> Path:
    accounts = "".join(
        ACCOUNT.format(name=name, token_url=server.token_url, client_id=DEMO_CLIENT_ID, secret=DEMO_CLIENT_SECRET, seed=seed)
        for name, seed in seeds.items()
    )
    path = tmp_path / f"{host}.yaml"
    path.write_text(CONFIG.format(tmp=tmp_path, host=host, dsn=dsn, accounts=accounts) + extra)
    os.chmod(path, 0o600)
    return path


def load(path: Path) -> Config:
    return config_module.load(path, {})


_OPEN: list[PgStore] = []  # closed after each test (a store holds pooled connections)


@pytest.fixture(autouse=True)
def _close_stores() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def refresher(config: Config, host: str, client: TokenClient | None = None) -> Refresher:
    store = open_store(config)
    assert isinstance(store, PgStore)
    store.host = host
    _OPEN.append(store)
    return Refresher(config, store, client or TokenClient(timeouts=config.timeouts))


def token_file(config: Config, name: str) -> str:
    return (config.token_dir / f"{name}.token").read_text().strip()


def template_section(server: AuthServer) -> str:
    return (
        f"templates:\n  app:\n    token_url: {server.token_url}\n    client_id: {DEMO_CLIENT_ID}\n    client_secret: {DEMO_CLIENT_SECRET}\n"
    )


# ---------------------------------------------------------------- config


def test_shared_state_templates_and_no_files_parse(tmp_path: Path, server: AuthServer) -> None:
    """shared_state, a template, and `outputs: []` (no files at all, with a shared state) are read as the README says."""
    path = write_config(tmp_path, "a", "postgresql://freshtoken@db.example/freshtoken", server, {"team": "seed"})
    path.write_text(
        path.read_text().replace("    refresh_token: seed\n", "    refresh_token: seed\n    outputs: []\n")
        + f"templates:\n  app:\n    token_url: {server.token_url}\n    client_id: {DEMO_CLIENT_ID}\n    client_auth: none\n"
    )
    config = load(path)
    assert config.shared_state == Secret("postgresql://freshtoken@db.example/freshtoken")
    assert not config.accounts["team"].local_files
    assert set(config.templates) == {"app"} and not config.templates["app"].local_files


def test_outputs_empty_without_a_shared_state_keeps_the_token_dir_files(tmp_path: Path, server: AuthServer) -> None:
    """Without shared_state, `outputs: []` means no extra outputs, as before: the token dir's files are what readers have."""
    path = write_config(tmp_path, "a", "x", server, {"solo": "seed"})
    path.write_text(
        path.read_text()
        .replace('shared_state: "x"\n', "")
        .replace("    refresh_token: seed\n", "    refresh_token: seed\n    outputs: []\n")
    )
    assert load(path).accounts["solo"].local_files


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"shared_state": "db.example"}, "shared_state: expected a libpq connection URI"),
        ({"drop_shared": True}, "templates: templates need shared_state"),
        ({"template_key": "    refresh_token: r\n"}, "templates.app.refresh_token: a template takes no refresh_token"),
        ({"template_key": "    outputs: [{path: /tmp/x}]\n"}, "templates.app.outputs: a template's users get no files"),
        ({"template_key": "    grant: client_credentials\n"}, "templates.app.grant: a template's users log in"),
        ({"template_name": "team"}, "templates.team: 'team' is an account too"),
    ],
)
def test_bad_shared_state_configs_exit_78_naming_the_key(
    tmp_path: Path, server: AuthServer, change: dict[str, object], message: str
) -> None:
    """Each mistake in the shared-state keys is a config error naming the key and the problem."""
    name = change.get("template_name", "app")
    text = write_config(tmp_path, "a", str(change.get("shared_state", "postgresql:///ft")), server, {"team": "seed"}).read_text()
    if change.get("drop_shared"):
        text = "\n".join(line for line in text.splitlines() if not line.startswith("shared_state")) + "\n"
    text += f"templates:\n  {name}:\n    token_url: {server.token_url}\n    client_id: c\n    client_secret: s\n"
    text += str(change.get("template_key", ""))
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load(path)


# ---------------------------------------------------------------- the refresh transaction across hosts


def test_concurrent_refreshes_on_two_hosts_spend_each_refresh_token_once(tmp_path: Path, pg_dsn: str, server: AuthServer) -> None:
    """Eight forced refreshes at once from two hosts' stores: eight rotations in a row at the server, no token sent twice."""
    seeds = {"team": server.issue_refresh_token(DEMO_CLIENT_ID, "s")}
    hosts = {h: refresher(load(write_config(tmp_path, h, pg_dsn, server, seeds)), h) for h in ("a", "b")}
    account = hosts["a"].config.accounts["team"]
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def run(host: str) -> None:
        start.wait()
        try:
            hosts[host].refresh(account, RefreshPolicy.ALWAYS)
        except BaseException as exc:  # noqa: BLE001  (collected and asserted below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(h,)) for h in ["a", "b"] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert (server.reuse_count, server.refreshes_ok) == (0, 8)
    stored = hosts["b"].store.load("team").refresh_token
    assert stored is not None and server.current_refresh_token(seeds["team"]) == stored.reveal()


def test_a_host_that_finds_a_fresh_token_only_writes_its_own_files(tmp_path: Path, pg_dsn: str, server: AuthServer) -> None:
    """Host a refreshes; host b's scheduled run then sends nothing and writes a's token into b's token dir."""
    seeds = {"team": server.issue_refresh_token(DEMO_CLIENT_ID, "s")}
    a = refresher(load(write_config(tmp_path, "a", pg_dsn, server, seeds)), "a")
    b = refresher(load(write_config(tmp_path, "b", pg_dsn, server, seeds)), "b")
    assert a.refresh(a.config.accounts["team"], RefreshPolicy.ALWAYS).refreshed
    sent = server.token_requests
    result = b.refresh(b.config.accounts["team"], RefreshPolicy.SCHEDULED)
    assert not result.refreshed and server.token_requests == sent
    assert token_file(b.config, "team") == token_file(a.config, "team")
    row = a.store.read("team")  # type: ignore[attr-defined]
    assert row is not None and row.last_refresh_host == "a"


class SessionKiller(TokenClient):
    """Ends every 'idle in transaction' session (the refresh lock's) just before the grant, as a database restart would."""

    def __init__(self, dsn: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.dsn = dsn

    def refresh(self, account: Account, refresh_token: Secret, *, before_send: BeforeSend | None = None) -> object:  # type: ignore[override]
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE state = 'idle in transaction'")
        return super().refresh(account, refresh_token, before_send=before_send)


def test_a_refresh_whose_lock_is_gone_sends_nothing(tmp_path: Path, pg_dsn: str, server: AuthServer) -> None:
    """If the session holding the row lock ends before the request, before_send() finds out and no refresh token leaves."""
    seeds = {"team": server.issue_refresh_token(DEMO_CLIENT_ID, "s")}
    config = load(write_config(tmp_path, "a", pg_dsn, server, seeds))
    killer = refresher(config, "a", SessionKiller(pg_dsn, timeouts=config.timeouts))
    with pytest.raises(TemporaryError, match="the PostgreSQL session holding the account's lock has ended"):
        killer.refresh(config.accounts["team"], RefreshPolicy.ALWAYS)
    assert server.token_requests == 0
    assert refresher(config, "a").refresh(config.accounts["team"], RefreshPolicy.ALWAYS).refreshed  # the seed still works


def test_the_attempt_of_a_sender_that_died_does_not_block_the_next_host(tmp_path: Path, pg_dsn: str, server: AuthServer) -> None:
    """A sender killed after recording its attempt frees its presence lock: the next host sees it gone and refreshes."""
    seeds = {"team": server.issue_refresh_token(DEMO_CLIENT_ID, "s")}
    config = load(write_config(tmp_path, "a", pg_dsn, server, seeds))
    b = refresher(config, "b")
    b.refresh(config.accounts["team"], RefreshPolicy.ALWAYS)  # the seed is stored
    dead = PgStore(pg_dsn, host="dead")
    _OPEN.append(dead)
    tx_cm = dead.transaction("team")
    tx = tx_cm.__enter__()
    tx.before_send()  # the attempt is committed; this "process" then dies without a word
    dead.close()
    tx._conn.close()  # noqa: SLF001  (the locked session ends with the process)
    with b.store.transaction("team") as seen:  # type: ignore[attr-defined]
        assert seen.attempt is not None and seen.attempt.host == "dead" and seen.attempt.sender_gone
    assert b.refresh(config.accounts["team"], RefreshPolicy.ALWAYS).refreshed
    assert server.reuse_count == 0


# ---------------------------------------------------------------- daemons: NOTIFY and templates


def test_a_running_daemon_writes_another_hosts_refresh_into_its_files(tmp_path: Path, pg_dsn: str, server: AuthServer) -> None:
    """`freshtoken run` on host b hears a's commit (NOTIFY) and rewrites b's token file with a's new token, without a request."""
    seeds = {"team": server.issue_refresh_token(DEMO_CLIENT_ID, "s")}
    a = refresher(load(write_config(tmp_path, "a", pg_dsn, server, seeds)), "a")
    a.refresh(a.config.accounts["team"], RefreshPolicy.ALWAYS)
    b_config = write_config(tmp_path, "b", pg_dsn, server, seeds)
    b_tokens = tmp_path / "b" / "tokens" / "team.token"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        [sys.executable, "-m", "freshtoken", "-c", str(b_config), "run"], env=env, stderr=subprocess.PIPE, text=True
    ) as daemon:
        try:
            assert poll(lambda: b_tokens.exists() and b_tokens.read_text().strip() == token_file(a.config, "team"), 60)
            sent = server.token_requests
            a.refresh(a.config.accounts["team"], RefreshPolicy.ALWAYS)
            new = token_file(a.config, "team")
            assert poll(lambda: b_tokens.read_text().strip() == new, 60), "b never wrote a's new token"
            assert server.token_requests == sent + 1  # a's refresh only: b sent nothing
        finally:
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err
    assert server.reuse_count == 0


def test_two_claimers_share_the_grants_of_a_template_and_refresh_each_once(tmp_path: Path, pg_dsn: str, server: AuthServer) -> None:
    """Grants stored with freshtoken_put_grant() are claimed by two hosts' Claimers: each refreshed exactly once, none twice."""
    path = write_config(tmp_path, "a", pg_dsn, server, {})
    path.write_text(path.read_text().replace("accounts:\n", "") + template_section(server))
    config = load(path)
    users = [f"user{i}@example.com" for i in range(12)]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for user in users:
            conn.execute("SELECT freshtoken_put_grant(%s, %s)", (f"app/{user}", server.issue_refresh_token(DEMO_CLIENT_ID, "s")))
    stopping = threading.Event()
    claimers = []
    for host in ("a", "b"):
        refreshing = refresher(config, host)
        store = refreshing.store
        assert isinstance(store, PgStore)
        claimers.append(Claimer(store, refreshing, lambda: config.templates, workers=3, clock=time.time, stopping=stopping))
    for claimer in claimers:
        claimer.start()
    try:
        assert poll(lambda: sum(c.refreshed for c in claimers) >= len(users), 60)
    finally:
        for claimer in claimers:
            claimer.stop()
    assert (server.refreshes_ok, server.reuse_count) == (len(users), 0)
    with psycopg.connect(pg_dsn) as conn:
        valid = conn.execute("SELECT count(*) FROM freshtoken_tokens WHERE account LIKE 'app/%' AND expires_at > now()").fetchone()
    assert valid == (len(users),)


# ---------------------------------------------------------------- commands


def run_cli(*argv: str) -> tuple[int, str, str]:
    import io

    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), environ={**os.environ}, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_db_init_creates_the_schema_the_daemon_requires(tmp_path: Path, pg_cluster: PgCluster, server: AuthServer) -> None:
    """Before `db init`, run and refresh exit 78 saying to run it; after, they work; init again changes nothing."""
    dsn = pg_cluster.dsn(pg_cluster.new_database())
    path = write_config(tmp_path, "a", dsn, server, {"team": server.issue_refresh_token(DEMO_CLIENT_ID, "s")})
    code, _, err = run_cli("-c", str(path), "run")
    assert code == 78 and "schema version 0, this freshtoken needs 1: run `freshtoken db init`" in err
    code, out, _ = run_cli("-c", str(path), "db", "init", "--reader-role", "tokens_reader")
    assert code == 0 and "migrated to schema version 1" in out and "tokens_reader may read the view freshtoken_tokens" in out
    assert run_cli("-c", str(path), "db", "init")[1].endswith("already at schema version 1\n")
    code, out, err = run_cli("-c", str(path), "refresh", "team")
    assert code == 0, err
    code, out, _ = run_cli("-c", str(path), "status")
    assert code == 0 and " by " in out.splitlines()[-1]


def test_migrate_state_moves_a_state_dir_into_postgresql_and_back(tmp_path: Path, pg_dsn: str, server: AuthServer) -> None:
    """A file-store login is copied into PostgreSQL, where another host can refresh with it; --to-files copies the rotated one back."""
    seed = server.issue_refresh_token(DEMO_CLIENT_ID, "s")
    path = write_config(tmp_path, "a", pg_dsn, server, {"team": seed})
    files_only = tmp_path / "files.yaml"
    files_only.write_text("\n".join(line for line in path.read_text().splitlines() if not line.startswith("shared_state")) + "\n")
    assert run_cli("-c", str(files_only), "refresh", "team")[0] == 0  # a state in the state dir, rotated once
    code, out, err = run_cli("-c", str(path), "migrate-state")
    assert (code, out) == (0, "team: copied to PostgreSQL\n"), err
    assert run_cli("-c", str(path), "migrate-state")[0] == 1  # the second time it is left alone
    b = refresher(load(write_config(tmp_path, "b", pg_dsn, server, {"team": seed})), "b")
    assert b.refresh(b.config.accounts["team"], RefreshPolicy.ALWAYS).refreshed
    code, out, err = run_cli("-c", str(path), "migrate-state", "--to-files", "--force")
    assert code == 0, err
    state = json.loads((tmp_path / "a" / "state" / "team.json").read_text())
    assert state["refresh_token"] == server.current_refresh_token(seed)
    assert server.reuse_count == 0


def test_a_template_user_is_refreshed_and_read_through_the_cli(tmp_path: Path, pg_dsn: str, server: AuthServer) -> None:
    """`refresh TEMPLATE --user NAME` refreshes a grant stored by the application; `get TEMPLATE --user NAME` prints its token."""
    path = write_config(tmp_path, "a", pg_dsn, server, {})
    path.write_text(path.read_text().replace("accounts:\n", "") + template_section(server))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SELECT freshtoken_put_grant('app/alice', %s)", (server.issue_refresh_token(DEMO_CLIENT_ID, "s"),))
    assert run_cli("-c", str(path), "get", "app", "--user", "alice")[0] == 1  # no access token yet
    assert run_cli("-c", str(path), "refresh", "app", "--user", "alice")[0] == 0
    code, out, _ = run_cli("-c", str(path), "get", "app", "--user", "alice")
    assert code == 0 and server.is_valid_access_token(out.strip())
    assert run_cli("-c", str(path), "get", "app")[0] == 1  # get alone reads only files; a template user has none
    assert "template app: 1 user grant(s), 1 with a valid token, 0 waiting for a login" in run_cli("-c", str(path), "status")[1]
    code, out, err = run_cli("-c", str(path), "logout", "app", "--user", "alice")
    assert code == 0, err
    assert run_cli("-c", str(path), "get", "app", "--user", "alice")[0] == 1
    assert "template app: 0 user grant(s)" in run_cli("-c", str(path), "status")[1]


def test_check_config_shows_the_shared_state_without_its_password(tmp_path: Path, pg_dsn: str, server: AuthServer) -> None:
    """check-config names the database with the password taken out, and each template."""
    path = write_config(tmp_path, "a", f"{pg_dsn} password=hunter2-secret", server, {"team": "seed"})
    path.write_text(path.read_text() + template_section(server))
    code, out, err = run_cli("-c", str(path), "check-config")
    assert code == 0, err
    assert "shared state  PostgreSQL " in out and "template app: users' grants are rows app/USER" in out
    assert "hunter2" not in out + err


def test_the_request_budget_follows_the_idle_timeout_set_in_the_dsn(pg_dsn: str) -> None:
    """`-c idle_in_transaction_session_timeout=4s` in the DSN's options is the session's, and the request budget follows it."""
    from freshtoken.pgstore import timeouts_from_options

    assert timeouts_from_options("").idle_in_transaction == 60.0
    timeouts = timeouts_from_options("-c search_path=public -c idle_in_transaction_session_timeout=4s -c lock_timeout=1500")
    assert (timeouts.idle_in_transaction, timeouts.lock, timeouts.request_budget) == (4.0, 1.5, 3.0)
    with PgStore(f"{pg_dsn} options='-c idle_in_transaction_session_timeout=4s'") as store, store.connect() as conn:
        assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("4s",)
        assert store.timeouts.request_budget == 3.0


def test_login_template_user_stores_the_users_grant_as_a_row(tmp_path: Path, pg_dsn: str, server: AuthServer) -> None:
    """`login TEMPLATE --user NAME` (in process, the browser played by requests) stores the grant as row TEMPLATE/NAME, no file."""
    import io

    import requests

    from freshtoken.login import login
    from freshtoken.sharedcmd import resolve_account

    path = write_config(tmp_path, "a", pg_dsn, server, {})
    section = template_section(server) + f"    authorize_url: {server.authorize_url}\n    redirect_uri: http://127.0.0.1/callback\n"
    path.write_text(path.read_text().replace("accounts:\n", "") + section)
    config = load(path)
    out, err = io.StringIO(), io.StringIO()
    account = resolve_account(config, "app", "bob@example.com")
    code = login(
        config, account, browser=True, manual=False, timeout=20, out=out, err=err, opener=lambda url: requests.get(url, timeout=15)
    )
    assert code == 0, err.getvalue()
    assert "get app --user bob@example.com" in out.getvalue() and "token file:      none" in out.getvalue()
    with PgStore(pg_dsn) as store:
        row = store.read("app/bob@example.com")
    assert row is not None and row.state.refresh_token is not None and row.state.access is not None
    assert server.is_valid_access_token(row.state.access.access_token.reveal())
    assert not (tmp_path / "a" / "tokens").exists() or not any((tmp_path / "a" / "tokens").iterdir())


def test_a_pooled_session_the_server_ended_is_not_used_again(pg_dsn: str) -> None:
    """After the server ends an idle pooled session (a restart, pg_terminate_backend), the next transaction works at once."""
    with PgStore(pg_dsn, host="a") as store, psycopg.connect(pg_dsn, autocommit=True) as admin:
        store.load("acct")  # leaves one idle session in the pool
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'freshtoken' AND state = 'idle'")
        count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'freshtoken'"
        assert poll(lambda: admin.execute(count).fetchone() == (0,), 30)
        with store.transaction("acct") as tx:
            tx.save(tx.state)
        assert tx.version == 1


def test_after_a_database_restart_a_living_senders_attempt_is_waited_for(pg_cluster: PgCluster, pg_dsn: str) -> None:
    """A restart frees every session's locks, a living sender's presence too: its attempt is not taken for a dead sender's."""
    with PgStore(pg_dsn, host="a") as a, PgStore(pg_dsn, host="b") as b:
        with a.transaction("acct") as first:
            first.save(first.state)
        tx = a.transaction("acct").__enter__()
        tx.before_send()  # a's refresh token is on its way when the database restarts
        pg_cluster.pause()
        pg_cluster.resume()
        with b.transaction("acct") as other:
            assert other.attempt is not None and other.attempt.host == "a"
            assert not other.attempt.sender_gone  # a's presence lock is free, but only because of the restart
            with pytest.raises(TemporaryError, match="has not saved the answer; waiting"):
                other.before_send()
        tx._conn.close()  # noqa: SLF001  (its session ended with the restart)


def test_a_process_does_not_wait_for_its_own_attempt_that_got_no_answer(pg_dsn: str) -> None:
    """A sender whose lock died with its request unanswered may try again at once; another host still waits for it."""
    with PgStore(pg_dsn, host="a") as a, PgStore(pg_dsn, host="b") as b, psycopg.connect(pg_dsn, autocommit=True) as admin:
        with a.transaction("acct") as first:
            first.save(first.state)
        with a.transaction("acct") as tx:
            tx.before_send()  # a's request goes out, and its answer never comes back; the session then dies
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE state = 'idle in transaction'")
        with b.transaction("acct") as other:
            assert other.attempt is not None and not other.attempt.mine
            with pytest.raises(TemporaryError, match="waiting for it"):
                other.before_send()
        with a.transaction("acct") as again:
            assert again.attempt is not None and again.attempt.mine
            assert again.before_send() > 0  # no 600 s wait for itself


def test_every_command_on_a_database_without_the_schema_says_run_db_init(tmp_path: Path, pg_cluster: PgCluster, server: AuthServer) -> None:
    """status, refresh, get/logout/login --user on a database where `db init` never ran: exit 78 in one line, no traceback."""
    dsn = pg_cluster.dsn(pg_cluster.new_database())
    path = write_config(tmp_path, "a", dsn, server, {"team": server.issue_refresh_token(DEMO_CLIENT_ID, "s")})
    section = template_section(server) + f"    authorize_url: {server.authorize_url}\n    redirect_uri: http://127.0.0.1/callback\n"
    path.write_text(path.read_text() + section)
    code, out, err = run_cli("-c", str(path), "status")  # status describes each account, the reason in its row
    assert code == 1 and "has no freshtoken schema: run `freshtoken db init`" in out and "Traceback" not in out + err
    for argv in (
        ["refresh", "team"],
        ["get", "app", "--user", "bob"],
        ["logout", "app", "--user", "bob"],
        ["login", "app", "--user", "bob", "--no-browser", "--timeout", "5"],  # before any URL is printed
    ):
        code, out, err = run_cli("-c", str(path), *argv)
        assert (code, out) == (78, ""), (argv, code, out, err)
        assert "schema" in err and "run `freshtoken db init`" in err and "Traceback" not in err, argv


def test_db_init_takes_its_options_after_the_command_and_a_template_needs_user(
    tmp_path: Path, pg_cluster: PgCluster, server: AuthServer
) -> None:
    """`db init -c FILE` works like every command; `refresh TEMPLATE` without --user says to give one."""
    dsn = pg_cluster.dsn(pg_cluster.new_database())
    path = write_config(tmp_path, "a", dsn, server, {"team": "seed"})
    path.write_text(path.read_text() + template_section(server))
    code, out, err = run_cli("db", "init", "-c", str(path))
    assert code == 0 and "migrated to schema version 1" in out, err
    code, _, err = run_cli("-c", str(path), "refresh", "app")
    assert code == 2 and "'app' is a template" in err and "--user NAME" in err


def test_a_multi_host_connection_string_is_shown_without_a_password_or_an_empty_port() -> None:
    """The failover form of shared_state (several hosts, no ports) is shown as libpq reads it, password and empty port left out."""
    from freshtoken.pgstore import redact

    shown = redact("postgresql://freshtoken:pw@db1.example,db2.example/freshtoken?target_session_attrs=read-write")
    assert shown == "user=freshtoken dbname=freshtoken host=db1.example,db2.example target_session_attrs=read-write"
