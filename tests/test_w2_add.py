"""`freshtoken add` (issue 12): an account appended to a real config file as text, safely."""

from __future__ import annotations

import argparse
import io
import os
import threading
from pathlib import Path

import pytest

from freshtoken import config, configedit
from freshtoken.configedit import add_account
from freshtoken.errors import ConfigError, FreshtokenError, UsageError
from freshtoken.providers import PRESETS

EXISTING = """\
# my freshtoken config: keep this comment
state_dir: {state}   # beside the tokens
token_dir: {tokens}

accounts:
    # the music one
    music:
        provider: spotify
        client_id: abc
        client_secret: ${{SPOT}}   # from the unit
    # old:
    #   provider: generic

# metrics stay last
metrics_listen: 127.0.0.1:9464
"""
SPOTIFY = {"client_id": "id-1", "client_secret": "${NEW_SECRET}", "scopes": ["user-read-email", "playlist-read-private"]}


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    return {
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "XDG_STATE_HOME": str(tmp_path / "xdg-state"),
        "XDG_RUNTIME_DIR": str(tmp_path / "xdg-runtime"),
        "SPOT": "s1",
    }


@pytest.fixture
def existing(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(EXISTING.format(state=tmp_path / "state", tokens=tmp_path / "tokens"))
    os.chmod(path, 0o640)
    return path


def temps(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".freshtoken-tmp-")]


def test_existing_text_is_kept_byte_for_byte_and_the_block_lands_last_under_accounts(existing: Path, environ: dict[str, str]) -> None:
    """Every byte of the old file survives; the commented block goes after the accounts' own lines, before what follows them."""
    old = existing.read_text()
    result = add_account(existing, "work", provider="spotify", options=SPOTIFY, environ=environ)
    new = existing.read_text()
    assert old == new.replace(result.block, "", 1)
    assert new.index("#   provider: generic") < new.index(result.block) < new.index("# metrics stay last")
    assert result.block.startswith(
        "    # added by `freshtoken add`; then run `freshtoken login work`\n    work:\n        provider: spotify\n"
    )
    assert "${NEW_SECRET}" in result.block


def test_the_new_file_loads_with_the_new_account_and_the_old_one_unchanged(existing: Path, environ: dict[str, str]) -> None:
    """config.load reads the result: the new account has what was asked, the old account is as it was."""
    before = config.load(existing, environ)
    add_account(existing, "work", provider="spotify", options=SPOTIFY, environ={**environ, "NEW_SECRET": "s2"})
    after = config.load(existing, {**environ, "NEW_SECRET": "s2"})
    assert ["music", "work"] == list(after.accounts)
    assert before.accounts["music"] == after.accounts["music"]
    work = after.accounts["work"]
    assert ("id-1", "s2", ("user-read-email", "playlist-read-private")) == (work.client_id, work.client_secret.reveal(), work.scopes)  # type: ignore[union-attr]
    assert PRESETS["spotify"].token_url == work.token_url


def test_mode_and_owner_are_kept_and_the_file_is_replaced_by_rename(existing: Path, environ: dict[str, str]) -> None:
    """The new file keeps 0640 and its owner; it is a new inode (temp + rename), so a reader of the old one saw it whole."""
    if os.geteuid() == 0:
        os.chown(existing, 4321, 4322)
    before = existing.stat()
    with open(existing) as reader:
        add_account(existing, "work", provider="spotify", options=SPOTIFY, environ=environ)
        assert EXISTING.splitlines()[0] == reader.readline().rstrip("\n")  # the old inode, untouched
        assert "work:" not in reader.read()
    after = existing.stat()
    assert (0o100640, before.st_uid, before.st_gid) == (after.st_mode, after.st_uid, after.st_gid)
    assert before.st_ino != after.st_ino
    assert [] == temps(existing.parent)


def test_a_symlinked_config_stays_a_link_and_its_target_is_edited(existing: Path, environ: dict[str, str], tmp_path: Path) -> None:
    """A dotfiles-style symlink keeps pointing at its target, which gets the account."""
    link = tmp_path / "link.yaml"
    link.symlink_to(existing)
    add_account(link, "work", provider="spotify", options=SPOTIFY, environ=environ)
    assert link.is_symlink()
    assert "work:" in existing.read_text()


def test_a_missing_config_is_created_0600_with_accounts(tmp_path: Path, environ: dict[str, str]) -> None:
    """No file yet: it is created (and its directory 0700) with only its owner able to read it, and it loads."""
    path = tmp_path / "new" / "dir" / "config.yaml"
    result = add_account(path, "work", provider="spotify", options=SPOTIFY, environ={**environ, "NEW_SECRET": "x"})
    assert result.created
    assert 0o100600 == path.stat().st_mode
    assert 0o40700 == path.parent.stat().st_mode
    assert "\naccounts:\n  # added by `freshtoken add`" in path.read_text()
    assert ["work"] == list(config.load(path, {**environ, "NEW_SECRET": "x"}).accounts)
    assert "added account 'work' to a new " in result.message


@pytest.mark.parametrize(
    ("accounts_text", "without_block"),
    [
        ("", "accounts:\n"),  # no accounts key at all: appended
        ("accounts:\n", "accounts:\n"),
        ("accounts: {}\n", "accounts:\n"),
        ("accounts: {}   # none yet\n", "accounts: # none yet\n"),
        ("accounts: null\n", "accounts:\n"),
        ("accounts:\n  # an example:\n  #   x: 1\n# after\n", "accounts:\n  # an example:\n  #   x: 1\n# after\n"),
    ],
)
def test_a_config_without_accounts_gets_its_first(tmp_path: Path, environ: dict[str, str], accounts_text: str, without_block: str) -> None:
    """No `accounts:` key, an empty one, `{}` or null: the account goes in as a block, the rest of the file unchanged."""
    path = tmp_path / "config.yaml"
    head = f"# top\nstate_dir: {tmp_path / 'state'}\n"
    path.write_text(head + accounts_text)
    result = add_account(path, "work", provider="spotify", options=SPOTIFY, environ={**environ, "NEW_SECRET": "x"})
    text = path.read_text()
    assert head + without_block == text.replace(result.block, "", 1)
    assert text.index(result.block) > text.find("#   x: 1")
    assert ["work"] == list(config.load(path, {**environ, "NEW_SECRET": "x"}).accounts)


def test_crlf_files_get_crlf_lines(tmp_path: Path, environ: dict[str, str]) -> None:
    """A file written on Windows keeps its CRLF line ends, the new block included."""
    path = tmp_path / "config.yaml"
    path.write_bytes(
        f"state_dir: {tmp_path}\r\naccounts:\r\n  a:\r\n    provider: spotify\r\n    client_id: x\r\n    client_auth: none\r\n".encode()
    )
    old = path.read_bytes()
    add_account(path, "b", provider="spotify", options={"client_id": "y", "client_auth": "none"}, environ=environ)
    new = path.read_bytes()
    assert new.startswith(old)
    assert b"\n" not in new.replace(b"\r\n", b"")
    assert ["a", "b"] == list(config.load(path, environ).accounts)


def test_values_yaml_would_misread_are_quoted(existing: Path, environ: dict[str, str]) -> None:
    """An account named `on` and a client id `0755` read back as those strings, not as true and 493."""
    add_account(existing, "on", provider="spotify", options={"client_id": "0755", "client_auth": "none"}, environ=environ)
    account = config.load(existing, environ).accounts["on"]
    assert "0755" == account.client_id


def test_other_keys_and_booleans_can_be_set(existing: Path, environ: dict[str, str]) -> None:
    """Any account key the config knows can be given; a boolean is written as one."""
    options = {"token_url": "http://127.0.0.1:1/token", "client_id": "c", "client_auth": "none", "pkce": False, "refresh_margin": "10m"}
    add_account(existing, "gen", provider="generic", options=options, environ=environ)
    account = config.load(existing, environ).accounts["gen"]
    assert (False, 600, "http://127.0.0.1:1/token") == (account.pkce, account.refresh_margin, account.token_url)


def test_parallel_adds_lose_no_account(existing: Path, environ: dict[str, str]) -> None:
    """Two `add`s at once each extend the other's result (the file is locked), so every account arrives."""
    errors: list[BaseException] = []

    def add(prefix: str) -> None:
        try:
            for index in range(8):
                add_account(
                    existing, f"{prefix}{index}", provider="spotify", options={"client_id": "c", "client_auth": "none"}, environ=environ
                )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(prefix,)) for prefix in "xy"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [] == errors
    assert 17 == len(config.load(existing, environ).accounts)


# ---------------------------------------------------------------- refusals: the file is never touched


def refused(path: Path, name: str, provider: str, options: dict[str, object], environ: dict[str, str]) -> FreshtokenError:
    before = path.read_bytes() if path.exists() else None
    with pytest.raises(FreshtokenError) as caught:
        add_account(path, name, provider=provider, options=options, environ=environ)
    assert before == (path.read_bytes() if path.exists() else None)
    assert [] == temps(path.parent)
    assert "\n" not in str(caught.value)
    return caught.value


@pytest.mark.parametrize(
    ("name", "provider", "options", "kind", "message"),
    [
        ("music", "spotify", SPOTIFY, UsageError, "account 'music' already exists in {file} (line 7); pick another name"),
        ("-x", "spotify", SPOTIFY, UsageError, "'-x' is not a valid account name: start with a letter or digit"),
        ("a b", "spotify", SPOTIFY, UsageError, "'a b' is not a valid account name"),
        ("work", "nope", SPOTIFY, UsageError, "unknown provider 'nope' (known: spotify"),
        ("work", "spotify", {"client_secret": "hunter2"}, UsageError, "client_secret: freshtoken add never writes a literal secret"),
        ("work", "spotify", {"refresh_token": "R"}, UsageError, "refresh_token: freshtoken add never writes a literal secret"),
        ("work", "spotify", {"tokn_url": "x"}, UsageError, "'tokn_url' is not an account key freshtoken add can set"),
        ("work", "spotify", {"client_id": "a\nb"}, UsageError, "client_id: the value contains a control character"),
        ("work", "spotify", {"outputs": [{"path": "/x"}]}, UsageError, "outputs: freshtoken add writes strings, numbers"),
        ("work", "generic", {"client_id": "c", "client_auth": "none"}, ConfigError, "{file}: accounts.work.token_url: missing"),
        ("work", "spotify", {"client_auth": "none"}, ConfigError, "{file}: accounts.work.client_id: missing"),
        (
            "work",
            "spotify",
            {"client_id": "c", "client_auth": "none", "redirect_uri": "nope"},
            ConfigError,
            "accounts.work.redirect_uri: 'nope' is not an http(s) URL",
        ),
    ],
)
def test_refusals_say_why_and_leave_the_file_alone(
    existing: Path, environ: dict[str, str], name: str, provider: str, options: dict[str, object], kind: type, message: str
) -> None:
    """Each refused add names the problem in one line and leaves the file byte for byte as it was."""
    error = refused(existing, name, provider, options, environ)
    assert isinstance(error, kind)
    assert message.format(file=existing) in str(error)
    assert "hunter2" not in str(error)


def test_unknown_provider_lists_the_presets_read_at_run_time(existing: Path, environ: dict[str, str]) -> None:
    """The known providers are whatever providers.PRESETS holds now, plus generic."""
    error = refused(existing, "work", "nope", SPOTIFY, environ)
    assert f"(known: {', '.join([*PRESETS, 'generic'])})" in str(error)


def test_a_config_that_will_not_load_is_reported_and_kept(tmp_path: Path, environ: dict[str, str]) -> None:
    """A file whose other account is already broken stays as it was; the error names that account and says nothing changed."""
    path = tmp_path / "config.yaml"
    path.write_text(f"state_dir: {tmp_path}\naccounts:\n  old:\n    provider: spotify\n    client_auth: none\n")
    error = refused(path, "work", "spotify", {"client_id": "c", "client_auth": "none"}, environ)
    assert (
        f"{path}: accounts.old.client_id: missing: the client id of your registered app (account not added; the file is unchanged)"
        == str(error)
    )
    assert 78 == error.exit_code


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("accounts: {a: {provider: spotify, client_id: x, client_auth: none}}\n", "accounts: is written in flow style"),
        ("accounts:\n  {a: {provider: spotify, client_id: x, client_auth: none}}\n", "accounts: is written in flow style"),
        (
            "accounts: &all\n  a: {provider: spotify, client_id: x, client_auth: none}\n",
            "accounts: is written in a form (anchor, tag or flow)",
        ),
        ("accounts: [a]\n", "accounts: is not a mapping"),
        ("- a\n", "the top level is not a mapping"),
        ("{accounts: {}}\n", "accounts: is written in flow style"),
        ("state_dir: /x\n...\n", "cannot place an account in this file's layout safely"),
        ("accounts: {\n", "malformed YAML"),
    ],
)
def test_layouts_add_cannot_extend_are_refused(tmp_path: Path, environ: dict[str, str], text: str, message: str) -> None:
    """Flow style, anchors and other layouts are refused with a clear message (exit 78) instead of being rewritten."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    error = refused(path, "b", "spotify", {"client_id": "y", "client_auth": "none"}, environ)
    assert message in str(error)
    assert 78 == error.exit_code


def test_a_path_it_cannot_read_is_reported_without_a_traceback(tmp_path: Path, environ: dict[str, str]) -> None:
    """A config path under a file (not a directory): one line naming the path, exit 1."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(FreshtokenError) as caught:
        add_account(blocker / "config.yaml", "work", provider="spotify", options=SPOTIFY, environ=environ)
    assert f"{blocker / 'config.yaml'}: cannot read: Not a directory" == str(caught.value)


# ---------------------------------------------------------------- the command line helpers


def run(argv: list[str], environ: dict[str, str], config_path: str | None = None) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    configedit.add_arguments(parser)
    args = parser.parse_args(argv)
    args.config = config_path
    out = io.StringIO()
    return configedit.run_add(args, environ, out, io.StringIO()), out.getvalue()


def test_run_add_prints_the_login_line_with_c_for_a_file_login_would_not_find(existing: Path, environ: dict[str, str]) -> None:
    """`add` ends by offering the login command, with -c when the file is not where freshtoken looks by default."""
    argv = ["work", "--provider", "spotify", "--client-id", "i", "--client-secret-env", "NEW_SECRET", "--scope", "a b", "--scope", "c"]
    code, out = run(argv, environ, str(existing))
    assert 0 == code
    assert f"next: freshtoken -c {existing} login work\n" in out
    assert "note: $NEW_SECRET is not set here" in out
    assert ("a", "b", "c") == config.load(existing, {**environ, "NEW_SECRET": "x"}).accounts["work"].scopes


def test_run_add_creates_the_named_config_and_offers_a_plain_login(environ: dict[str, str], tmp_path: Path) -> None:
    """With $FRESHTOKEN_CONFIG naming a file that does not exist, add creates it and offers `freshtoken login NAME` without -c."""
    path = tmp_path / "cfg" / "config.yaml"
    secret = tmp_path / "secret"
    environ = {**environ, "FRESHTOKEN_CONFIG": str(path)}
    code, out = run(["work", "--provider", "spotify", "--client-id", "i", "--client-secret-file", str(secret)], environ)
    assert 0 == code and path.exists()
    assert "next: freshtoken login work\n" in out
    assert f"note: {secret} does not exist yet" in out


def test_default_path_is_where_freshtoken_looks(tmp_path: Path, environ: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """-c wins, then $FRESHTOKEN_CONFIG, then an existing candidate; a new file is the user's XDG config, or /etc's for root."""
    monkeypatch.chdir(tmp_path)
    xdg = tmp_path / "xdg-config" / "freshtoken" / "config.yaml"
    assert Path("x.yaml") == configedit.default_path("x.yaml", {**environ, "FRESHTOKEN_CONFIG": "y.yaml"})
    assert Path("y.yaml") == configedit.default_path(None, {**environ, "FRESHTOKEN_CONFIG": "y.yaml"})
    assert xdg == configedit.default_path(None, environ, euid=1000)
    assert Path("/etc/freshtoken/config.yaml") == configedit.default_path(None, environ, euid=0)
    (tmp_path / "freshtoken.yaml").write_text("accounts:\n")
    assert Path("freshtoken.yaml") == configedit.default_path(None, environ, euid=0)


def test_run_add_writes_a_secret_file_path_as_an_absolute_one(
    existing: Path, environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--client-secret-file ./secret is written as an absolute path (the config wants one); a bare name stays a credential name."""
    monkeypatch.chdir(existing.parent)
    (existing.parent / "secret").write_text("s3\n")
    (existing.parent / "spotify-secret").write_text("s4\n")
    run(["a", "--provider", "spotify", "--client-id", "i", "--client-secret-file", "./secret"], environ, str(existing))
    run(["b", "--provider", "spotify", "--client-id", "i", "--client-secret-file", "spotify-secret"], environ, str(existing))
    loaded = config.load(existing, {**environ, "CREDENTIALS_DIRECTORY": str(existing.parent)})
    assert str(existing.parent / "secret") == loaded.accounts["a"].client_secret_file
    assert "spotify-secret" == loaded.accounts["b"].client_secret_file


def test_run_add_set_takes_booleans_and_refuses_a_bad_variable_name(existing: Path, environ: dict[str, str]) -> None:
    """--set pkce=false writes a boolean; --client-secret-env with a non-name is a usage error."""
    run(["a", "--provider", "spotify", "--client-id", "i", "--client-auth", "none", "--set", "pkce=false"], environ, str(existing))
    assert config.load(existing, environ).accounts["a"].pkce is False
    with pytest.raises(UsageError, match="not an environment variable name"):
        run(["b", "--provider", "spotify", "--client-secret-env", "A-B"], environ, str(existing))
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        run(["b", "--provider", "spotify", "--set", "pkce"], environ, str(existing))
