"""The commands of the shared state (config `shared_state:`): `db init`, `migrate-state`, and TEMPLATE --user NAME.

Only these, `run` and the refresh paths import psycopg (through pgstore), and only
when the config names a database.
"""

from __future__ import annotations

import re
from typing import IO, TYPE_CHECKING, Any

from freshtoken.errors import ConfigError, FreshtokenError, TokenUnavailable, UsageError
from freshtoken.model import USER_SEPARATOR, Account, AccountState, Config, user_account

if TYPE_CHECKING:
    from freshtoken.pgstore import PgStore

USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,199}")  # as freshtoken_put_grant() checks it in SQL


def pg_store(config: Config) -> PgStore:
    """The config's PostgreSQL store (statestore.open_store); a ConfigError (exit 78) for a config that has none."""
    if config.shared_state is None:
        raise ConfigError(config.file, "shared_state", "not set: this command works on the shared state in PostgreSQL")
    from freshtoken.pgstore import PgStore
    from freshtoken.statestore import open_store

    store = open_store(config)
    assert isinstance(store, PgStore)  # noqa: S101  # shared_state is set
    return store


def resolve_account(config: Config, name: str, user: str | None) -> Account:
    """ACCOUNT, or TEMPLATE with --user NAME: the account a command acts on (UsageError, exit 2, for a wrong pair)."""
    if user is None:
        if name in config.templates:
            raise UsageError(f"{name!r} is a template in {config.file}: give the user's grant with --user NAME")
        if name not in config.accounts:
            known = ", ".join([*config.accounts, *config.templates])
            raise UsageError(f"unknown account {name!r} in {config.file} (configured: {known})")
        return config.accounts[name]
    template = config.templates.get(name)
    if template is None:
        raise UsageError(f"--user needs a template (templates: in {config.file}); {name!r} is not one")
    if not USER_NAME.fullmatch(user):
        raise UsageError(f"{user!r} is not a user name (a letter or digit, then letters, digits and _ . @ + -, at most 200)")
    return user_account(template, user)


def db_init(config: Config, reader_role: str | None, out: IO[str]) -> int:
    """`freshtoken db init`: create or upgrade the schema; with --reader-role, let that role read the tokens view only."""
    with pg_store(config) as store:
        applied = store.migrate()
        from freshtoken.pgstore import SCHEMA_VERSION

        verb = f"migrated to schema version {SCHEMA_VERSION}" if applied else f"already at schema version {SCHEMA_VERSION}"
        print(f"PostgreSQL ({store.where}): {verb}", file=out)
        if reader_role:
            store.grant_reader(reader_role)
            print(f"{reader_role} may read the view freshtoken_tokens, and nothing else of freshtoken's", file=out)
    return 0


def migrate_state(config: Config, names: list[str], *, to_files: bool, force: bool, out: IO[str], err: IO[str]) -> int:
    """`freshtoken migrate-state`: copy each account's state from the state dir into PostgreSQL (or back).

    Both sides are locked while a state is copied. A destination that already holds a refresh token is
    left alone unless --force: it may be newer. The source is kept (as it was), so a mistake can be undone;
    once a daemon runs on the destination the source's refresh token is spent, and worth nothing.
    """
    from freshtoken.store import Store

    files = Store(config.state_dir)
    worst = 0
    with pg_store(config) as db:
        db.check_schema()
        source, target = (db, files) if to_files else (files, db)
        where = "the state dir" if to_files else "PostgreSQL"
        for name in names or list(config.accounts):
            if name not in config.accounts:
                raise UsageError(f"unknown account {name!r} in {config.file}")
            try:
                with source.transaction(name) as src, target.transaction(name) as dst:
                    if src.state.refresh_token is None and src.state.access is None:
                        print(f"{name}: nothing stored to copy", file=out)
                        continue
                    if dst.state.refresh_token is not None and not force:
                        print(f"{name}: {where} already holds a refresh token; left alone (--force replaces it)", file=err)
                        worst = max(worst, 1)
                        continue
                    dst.save(src.state)
                    print(f"{name}: copied to {where}", file=out)
            except FreshtokenError as exc:
                print(f"{name}: {exc}", file=err)
                worst = max(worst, exc.exit_code)
    return worst


def get_from_db(config: Config, account: Account, fmt: str, min_valid: float, now: float) -> bytes:
    """`get TEMPLATE --user NAME`: the user's current access token, read from PostgreSQL (no file holds it)."""
    from freshtoken.formats import render
    from freshtoken.getcmd import check_valid_for

    with pg_store(config) as store:
        row = store.read(account.name)
    access = row.state.access if row else None
    if access is None:
        raise TokenUnavailable(f"no token for {account.name!r} in PostgreSQL; `freshtoken login {_login_words(account)}` stores one")
    check_valid_for(account.name, access.expires_at - now, min_valid)  # the same rule and words as `get` from a file
    return render(fmt, access, account.name)


def describe(config: Config, now: float) -> list[dict[str, Any]]:
    """status's rows from PostgreSQL: the state dir's rows, plus which host refreshed last. One read per account.

    The database being down is a row error for each account, as an unreadable state file is.
    """
    from freshtoken.status import _describe_one, _error_row

    rows = []
    try:
        with pg_store(config) as store:
            for account in config.accounts.values():
                row = store.read(account.name)
                if row is not None and row.unusable is not None:
                    rows.append({**_error_row(config, account, str(row.unusable)), "state_file": store.where})
                    continue
                state = row.state if row else AccountState()
                rows.append(
                    {
                        **_describe_one(config, account, state, now),
                        "state_file": f"{account.name} in PostgreSQL ({store.where})",
                        "last_refresh_host": row.last_refresh_host if row else None,
                    }
                )
    except FreshtokenError as exc:  # down, or no schema: every row says so
        return [_error_row(config, account, str(exc)) for account in config.accounts.values()]
    return rows


def template_rows(config: Config, now: float) -> list[dict[str, Any]]:
    """One status row per template: how many users' grants it has, how many valid, how many waiting for a login."""
    if not config.templates:
        return []
    with pg_store(config) as store:
        return [{"template": name, **store.template_summary(name, now)} for name in config.templates]


def _login_words(account: Account) -> str:
    template, _, user = account.name.partition(USER_SEPARATOR)
    return f"{template} --user {user}" if user else account.name
