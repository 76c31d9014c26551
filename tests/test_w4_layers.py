"""The layers in effect: what importing a module really loads (sys.modules in a fresh interpreter), and the pure schema."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from freshtoken import dirs, formats, schema
from freshtoken.errors import ConfigError
from freshtoken.model import ClientAuth, Grant, OutputFormat, Timeouts
from freshtoken.schema import Defaults

ADAPTERS = ("yaml", "requests", "urllib3", "apscheduler", "psycopg", "freshtoken.config", "freshtoken.oauth", "freshtoken.pgstore")


def newly_loaded(code: str) -> set[str]:
    """The modules that running `code` in a fresh interpreter adds to sys.modules (site's own imports excluded)."""
    script = f"import sys\nbefore = set(sys.modules)\n{code}\nprint(' '.join(sorted(set(sys.modules) - before)))\n"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    return set(run.stdout.split("\n")[-2].split())


def adapters_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == a or m.startswith(a + ".") for a in ADAPTERS))


@pytest.mark.parametrize(
    "code",
    [
        "from freshtoken.model import Account, Config, Output, Grant, ClientAuth, OutputFormat, Timeouts",
        "import freshtoken.schema",
        "import freshtoken.outputs",
        "import freshtoken.providers",
        "import freshtoken.status",
        "import freshtoken.statestore",
    ],
)
def test_the_model_and_its_users_load_no_adapter(code: str) -> None:
    """The domain types, the schema, outputs and status import neither yaml, requests nor psycopg (nor the modules that own them)."""
    assert adapters_in(newly_loaded(code)) == []


def test_oauth_does_not_load_yaml() -> None:
    """The HTTP adapter takes its Account from the model, not from the YAML adapter."""
    loaded = newly_loaded("import freshtoken.oauth")
    assert "requests" in loaded  # the probe sees what it should
    assert sorted(m for m in loaded if m.split(".")[0] == "yaml" or m == "freshtoken.config") == []


def test_dirs_is_as_cheap_as_get_needs() -> None:
    """The directory rules load nothing but themselves: no re, typing, dataclasses or pathlib on `get`'s path."""
    assert newly_loaded("import freshtoken.dirs") <= {"freshtoken", "freshtoken.dirs", "__future__"}


@pytest.mark.parametrize("with_config", [False, True], ids=["get", "get -c"])
def test_get_loads_neither_yaml_nor_requests(tmp_path: Path, with_config: bool) -> None:
    """`freshtoken get` and `get -c CONFIG` (a plain config) print the token without loading any adapter or the schema."""
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "demo.json").write_text(json.dumps({"access_token": "tok-1", "token_type": "Bearer", "expires_at": time.time() + 3600}))
    config = tmp_path / "c.yaml"
    config.write_text(f"token_dir: {tokens}\naccounts:\n  demo:\n    client_id: x\n    token_url: https://a.example/t\n")
    argv = ["-c", str(config), "get", "demo"] if with_config else ["get", "demo", "--token-dir", str(tokens)]
    loaded = newly_loaded(f"from freshtoken.cli import main\nassert main({argv!r}) == 0")
    assert adapters_in(loaded) == []
    assert "freshtoken.schema" not in loaded and "freshtoken.getcmd" in loaded


DOC = {"accounts": {"a": {"token_url": "https://a.example/t", "client_id": "x", "client_auth": "none"}}}


def test_schema_takes_the_default_dirs_from_its_caller() -> None:
    """schema.parse asks the system nothing: the dirs a document leaves out are the Defaults it is given."""
    parsed = schema.parse(DOC, "f.yaml", {}, defaults=Defaults("/given/state", "/given/tokens", 4242))
    assert (parsed.state_dir, parsed.token_dir) == (Path("/given/state"), Path("/given/tokens"))
    with pytest.raises(ConfigError) as caught:
        schema.parse(DOC, "f.yaml", {}, defaults=Defaults("/given/state", None, 4242))
    assert "token_dir: not set" in str(caught.value) and "/run/user/4242 gives a default" in str(caught.value)


def defaults(environ: dict[str, str], file: str | None, euid: int) -> tuple[str, str | None]:
    return dirs.default_state_dir(environ, file, euid=euid), dirs.default_token_dir(environ, file, euid=euid)


def test_default_dirs_follow_the_spec_for_any_uid() -> None:
    """dirs works out the default state and token dirs from the environment, the config's path and the uid it is told."""
    user = {"HOME": "/home/u", "XDG_RUNTIME_DIR": "/run/user/1000"}
    assert defaults(user, "/home/u/.config/freshtoken/config.yaml", 1000) == (
        "/home/u/.local/state/freshtoken",
        "/run/user/1000/freshtoken",
    )
    assert defaults({"HOME": "/root"}, "/root/freshtoken.yaml", 0) == ("/var/lib/freshtoken", "/run/freshtoken")
    system = {"HOME": "/home/u", "XDG_STATE_HOME": "/xs"}
    assert defaults(system, "/etc/freshtoken/config.yaml", 1000) == ("/var/lib/freshtoken", "/run/freshtoken")
    service = {"STATE_DIRECTORY": "/s1:/s2", "RUNTIME_DIRECTORY": "/r1:/r2"}
    assert defaults(service, "/etc/freshtoken/config.yaml", 1000) == ("/s1", "/r1")
    assert defaults({"HOME": "/home/u"}, None, 4242) == ("/home/u/.local/state/freshtoken", None)  # no /run/user/4242 here


def test_parsed_accounts_carry_typed_choices() -> None:
    """grant, client_auth and an output's format come out of the schema as enum members, and presets give enum members too."""
    doc = {
        "accounts": {
            "cc": {
                "token_url": "https://a.example/t",
                "client_id": "x",
                "client_secret": "s",
                "grant": "client_credentials",
                "client_auth": "post",
                "outputs": [{"path": "/o/cc.env", "format": "env"}],
            },
            "sp": {"provider": "spotify", "client_id": "y", "client_secret": "s"},
        }
    }
    parsed = schema.parse(doc, "f.yaml", {}, defaults=Defaults("/s", "/t", 1000))
    cc, sp = parsed.accounts["cc"], parsed.accounts["sp"]
    assert (cc.grant, cc.client_auth, cc.outputs[0].format) == (Grant.CLIENT_CREDENTIALS, ClientAuth.POST, OutputFormat.ENV)
    assert type(cc.grant) is Grant and type(cc.client_auth) is ClientAuth and type(cc.outputs[0].format) is OutputFormat
    assert (sp.grant, type(sp.client_auth)) == (Grant.REFRESH_TOKEN, ClientAuth)


def test_get_knows_the_same_formats_as_the_config() -> None:
    """`get --format` (formats.FORMATS, enum-free for speed) accepts exactly the output formats a config may name."""
    assert formats.FORMATS == tuple(OutputFormat)


def test_a_config_gives_its_timeouts_in_one_place() -> None:
    """Config.timeouts is the token endpoint's Timeouts from connect_timeout and read_timeout."""
    doc = {**DOC, "connect_timeout": "2s", "read_timeout": 3.5}
    assert schema.parse(doc, "f.yaml", {}, defaults=Defaults("/s", "/t", 1000)).timeouts == Timeouts(2.0, 3.5)
