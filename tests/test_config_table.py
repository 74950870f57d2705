"""The table of settings: the example file is written from it, and ``check-config`` credits
every setting to where it came from (file, environment, default, systemd), for both outboxes."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

from relay.cli.parser import main
from relay.config.example import example
from relay.config.keys import ENVIRONMENT, SECTION_KEYS, TABLE, Row
from relay.config.loading import load_settings
from relay.config.settings import Settings
from relay.config.values import parse_hosts
from relay.errors import ConfigError

EXAMPLE = Path(__file__).parent.parent / "relay" / "relay.example.toml"
SECRET = "s3cr3t-long-enough-for-mmolove"
TOKEN = "t0ken-long-enough-for-ingest"
PG_URL = "postgresql://u@h/db"


def test_the_example_file_is_written_from_the_table() -> None:
    assert EXAMPLE.read_text(encoding="utf-8") == example(), (
        "relay/relay.example.toml differs from the table of settings; regenerate it with "
        "`mmolove-relay check-config --example > relay/relay.example.toml`"
    )


def test_the_example_file_states_every_key_and_each_default_it_sets() -> None:
    text = example()
    for row in TABLE:
        for key in row.keys:
            assert re.search(rf"^#? ?{key} = ", text, re.MULTILINE), f"{row.where}: {key}"
    doc = tomllib.loads(text)
    for row in TABLE:
        section = doc.get(row.key.section, {}) if row.key.section else doc
        if row.keys[0] in section and not row.key.composite and row.key.parse is None:
            assert section[row.keys[0]] == row.default, row.name


def test_each_key_and_variable_belongs_to_one_setting() -> None:
    claimed: dict[tuple[str, str], str] = {}
    for row in TABLE:
        for key in row.keys:
            assert (row.key.section, key) not in claimed, (row.name, claimed)
            claimed[row.key.section, key] = row.name
    # One variable sets two settings only where it names the outbox: a file or a database.
    shared = [name for name, (what, _) in ENVIRONMENT.items() if "; or " in what]
    assert shared == ["MMOLOVE_RELAY_DB"]
    assert {"allowed_hosts", "listen", "token"} <= SECTION_KEYS["ingest"]


def test_the_public_variable_names_are_all_read() -> None:
    """The spec's table of variables is an interface: a rename breaks deployments."""
    public = {
        "MMOLOVE_RELAY_CONFIG",
        "MMOLOVE_SERVER_ID",
        "MMOLOVE_SECRET",
        "MMOLOVE_SECRET_FILE",
        "MMOLOVE_KID",
        "MMOLOVE_ENDPOINT",
        "MMOLOVE_RELAY_LISTEN",
        "MMOLOVE_RELAY_DB",
        "MMOLOVE_RELAY_INGEST_TOKEN",
        "MMOLOVE_RELAY_LOG_FORMAT",
        "MMOLOVE_RELAY_INGEST_TOKEN_FILE",
        "MMOLOVE_RELAY_ALERT_URL",
        "MMOLOVE_RELAY_ALERT_URL_FILE",
        "MMOLOVE_RELAY_ALERT_KIND",
    }
    assert public <= set(ENVIRONMENT)


# -- check-config credits each setting ------------------------------------------------------

# A value other than the default, as the file writes it and as a variable says it.
SPECIAL: dict[str, tuple[str, str]] = {
    "endpoint": ('"https://mmolove.example/events"', "https://mmolove.example/events"),
    "log_format": ('"console"', "console"),
    "ca_file": ('"ca.pem"', "ca.pem"),
    "listen": ('"127.0.0.1:9999"', "127.0.0.1:9999"),
    "ingest_token": (f'"{TOKEN}"', TOKEN),
    "allowed_hosts": ('["Relay.Example", "10.0.0.7"]', "Relay.Example, 10.0.0.7"),
    "db_path": ('"elsewhere.db"', "elsewhere.db"),
    "db_url": (f'"{PG_URL}"', PG_URL),
    "db_password": ("", ""),  # a file, made by the test
}


def sample(row: Row) -> tuple[str, str]:
    if row.name in SPECIAL:
        return SPECIAL[row.name]
    default = row.default
    if isinstance(default, bool):
        return str(not default).lower(), str(not default).lower()
    assert isinstance(default, int | float), f"give {row.name} a sample in SPECIAL"
    value = default * 2 or 1
    return repr(value), repr(value)


def check_config(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    environ: dict[str, str],
    config: Path,
    *flags: str,
) -> str:
    """What ``check-config`` prints, run in this process on ``environ`` and ``config``."""
    with monkeypatch.context() as patch:
        patch.setattr(os, "environ", environ)
        code = main(["check-config", "--config", str(config), *flags])
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def credits(out: str) -> dict[str, tuple[str, str]]:
    """check-config's lines, by setting: (the value shown, where it came from)."""
    lines = re.findall(r"^  (\w+) = (.*)   \[(.*)\]$", out, re.MULTILINE)
    return {name: (value, source) for name, value, source in lines}


# Each setting under each outbox; the outbox's own setting only under its backend.
CASES = [
    pytest.param(row, outbox, id=f"{row.name}-{outbox}")
    for row in TABLE
    if row.name not in ("servers", "alerts", "game_sources")  # lists: their own tests
    for outbox in ("sqlite", "postgresql")
    if (row.name, outbox) not in {("db_url", "sqlite"), ("db_path", "postgresql")}
]


@pytest.mark.parametrize(("row", "outbox"), CASES)
def test_check_config_credits_each_setting_to_the_file_the_environment_or_its_default(
    row: Row,
    outbox: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "db.password").write_text("pg-password-0123456789")
    in_file, in_env = sample(row)
    if row.name == "db_password":
        in_file, in_env = f'"{tmp_path / "db.password"}"', str(tmp_path / "db.password")
    config = tmp_path / "relay.toml"

    def credited(file_line: str, environ: dict[str, str]) -> tuple[str, str]:
        """check-config's credit for the setting, with ``file_line`` in its section."""
        tables: dict[str, list[str]] = {"": [], "outbox": []}
        if outbox == "postgresql" and row.name != "db_url":
            tables["outbox"].append(f'url = "{PG_URL}"')
        if file_line:
            tables.setdefault(row.key.section, []).append(file_line)
        text = "".join(f"{line}\n" for line in tables.pop(""))
        text += f'[[servers]]\nid = "srv-1"\nsecret = "{SECRET}"\n'
        text += "".join(
            f"[{name}]\n" + "".join(f"{line}\n" for line in lines)
            for name, lines in tables.items()
            if lines
        )
        config.write_text(text)
        return credits(check_config(monkeypatch, capsys, environ, config, "--all"))[row.name]

    # The file.
    value, source = credited(f"{row.keys[0]} = {in_file}", {})
    assert source == f"file {config}", (row.name, value)
    # The environment, over the file.
    for name in row.key.env:
        if name.endswith("_FILE") and row.name != "db_password":
            continue  # the file variant of a variable: its own cases in test_config
        value, source = credited(f"{row.keys[0]} = {in_file}", {name: in_env})
        assert source == f"environment {name}", (row.name, value)
    # The default.
    value, source = credited("", {})
    assert source == "default", (row.name, value)
    if isinstance(row.default, Path):
        assert value == str(tmp_path / row.default), "paths are printed absolute"


def test_the_outbox_named_by_one_variable_is_credited_to_it_and_the_path_is_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The report in issue 22: MMOLOVE_RELAY_DB=postgresql://... was credited to db_path,
    shown relative, while db_url showed [default]."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "relay.toml"
    config.write_text(f'[[servers]]\nid = "srv-1"\nsecret = "{SECRET}"\n')
    env = {"MMOLOVE_RELAY_DB": "postgresql://u:pw-77c1@h/db"}
    shown = credits(check_config(monkeypatch, capsys, env, config))
    assert shown["db_url"] == ("postgresql://***@h/db", "environment MMOLOVE_RELAY_DB")
    assert "db_path" not in shown, "the file outbox is not in use: shown with --all only"
    shown = credits(check_config(monkeypatch, capsys, env, config, "--all"))
    assert shown["db_path"] == (str(tmp_path / "mmolove-relay.db"), "default")

    shown = credits(check_config(monkeypatch, capsys, {"STATE_DIRECTORY": str(tmp_path)}, config))
    assert shown["db_path"] == (str(tmp_path / "outbox.db"), "systemd StateDirectory")


def test_check_config_credits_the_servers_and_the_alert_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[[servers]]\nid = "srv-1"\nsecret = "{SECRET}"\n'
        '[[alerts]]\nkind = "slack"\nurl = "https://hooks.slack.example/t0ken-a"\n'
    )
    shown = credits(check_config(monkeypatch, capsys, {}, config))
    assert shown["servers"] == ("srv-1", f"file {config}")
    assert shown["alerts"] == ("slack https://hooks.slack.example/***", f"file {config}")

    (tmp_path / "mmolove-secret").write_text(SECRET)
    env = {
        "MMOLOVE_SERVER_ID": "srv-2",
        "CREDENTIALS_DIRECTORY": str(tmp_path),
        "MMOLOVE_RELAY_ALERT_URL": "https://hooks.example/t0ken-b",
    }
    out = check_config(monkeypatch, capsys, env, config)
    shown = credits(out)
    assert shown["servers"] == ("srv-2", "environment MMOLOVE_SERVER_ID")
    assert shown["alerts"][1] == f"file {config} and environment MMOLOVE_RELAY_ALERT_URL"
    # Each server's line names where its secret came from.
    assert "  server srv-2: secret *** from systemd credential mmolove-secret" in out
    assert "t0ken" not in out


def test_check_config_shows_what_differs_from_the_defaults_and_all_with_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[[servers]]\nid = "srv-1"\nsecret = "{SECRET}"\n[delivery]\nconcurrency = 3\n'
    )
    shown = credits(check_config(monkeypatch, capsys, {}, config))
    # Where events go, come in and are kept, always; then only what was set.
    assert set(shown) == {"endpoint", "listen", "db_path", "servers", "concurrency"}
    everything = credits(check_config(monkeypatch, capsys, {}, config, "--all"))
    assert set(everything) == {row.name for row in TABLE}
    assert everything["max_batch"] == (str(Settings().max_batch), "default")


# -- allowed_hosts ---------------------------------------------------------------------------


def test_allowed_hosts_are_bare_lower_cased_names_from_the_file_or_the_variable(
    tmp_path: Path,
) -> None:
    config = tmp_path / "relay.toml"
    config.write_text('[ingest]\nallowed_hosts = ["Relay.Example", "[fd00::1]", "10.0.0.7"]\n')
    settings = load_settings({}, config, require_servers=False)
    assert settings.allowed_hosts == ("relay.example", "fd00::1", "10.0.0.7")
    env = {"MMOLOVE_RELAY_ALLOWED_HOSTS": " a.example, B.example,"}
    assert load_settings(env, config, require_servers=False).allowed_hosts == (
        "a.example",
        "b.example",
    )
    assert load_settings({}, require_servers=False).allowed_hosts == ()


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("https://relay.example", "has a scheme"),
        ("relay.example:8787", "has a port"),
        ("[fd00::1]:8787", "has a port"),
        ("relay.example/ingest", "has a path"),
        ("relay example", "has whitespace"),
        ("", "is empty"),
        ("relay_*.example!", "is not a host name"),
    ],
)
def test_an_allowed_host_with_a_scheme_port_path_or_space_is_refused(
    entry: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)) as caught:
        parse_hosts([entry], "file relay.toml")
    message = str(caught.value)
    assert "file relay.toml" in message
    assert "e.g. relay.example.com" in message
    with pytest.raises(ConfigError, match="must be an array"):
        parse_hosts(7, "file relay.toml")
