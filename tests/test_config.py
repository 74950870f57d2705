"""Configuration: the environment names of the spec, the TOML file, and one clear line for
whatever is missing or wrong."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from relay.config.keys import KNOWN_VARIABLES
from relay.config.loading import load_settings
from relay.config.report import describe
from relay.config.settings import Settings
from relay.config.values import Listen, base_url, mask_url, parse_listen
from relay.errors import ConfigError
from relay.sandbox import RunningSandbox
from tests.harness import Spawn, relay_env
from tests.support import SECRET, cli, eventually

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).parent.parent / "relay" / "relay.example.toml"
BASE = {"MMOLOVE_SERVER_ID": "srv-9", "MMOLOVE_SECRET": "s3cr3t"}


def test_environment_alone_is_enough() -> None:
    settings = load_settings(
        {
            **BASE,
            "MMOLOVE_KID": "k1",
            "MMOLOVE_ENDPOINT": "http://127.0.0.1:9/x",
            "MMOLOVE_RELAY_LISTEN": "127.0.0.1:9999",
            "MMOLOVE_RELAY_DB": "/srv/relay/x.db",
            "MMOLOVE_RELAY_LOG_FORMAT": "console",
        }
    )
    [server] = settings.servers
    assert (server.server_id, server.secret.reveal(), server.kid) == ("srv-9", "s3cr3t", "k1")
    assert settings.endpoint == "http://127.0.0.1:9/x"
    assert settings.listen == Listen("127.0.0.1", 9999)
    assert settings.db_path == Path("/srv/relay/x.db")
    assert settings.log_format == "console"


def test_defaults_are_safe() -> None:
    settings = load_settings(BASE)
    assert settings.listen.is_loopback
    assert str(settings.listen) == "127.0.0.1:8787"
    assert settings.endpoint == "https://mmolove.com/api/referral/events"
    # Absolute: logs and check-config say where the outbox is, not "in the start directory".
    assert settings.db_path == Path.cwd() / "mmolove-relay.db"
    assert settings.max_age_s == 7 * 24 * 3600


def test_state_directory_holds_the_outbox() -> None:
    settings = load_settings({**BASE, "STATE_DIRECTORY": "/var/lib/mmolove-relay"})
    assert settings.db_path == Path("/var/lib/mmolove-relay/outbox.db")


def test_example_file_documents_valid_keys() -> None:
    settings = load_settings({"MMOLOVE_SECRET": "x"}, EXAMPLE)
    assert settings.servers[0].server_id == "srv-123"
    assert settings.concurrency == 4


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({"MMOLOVE_SECRET": "x"}, "MMOLOVE_SERVER_ID"),
        ({"MMOLOVE_SERVER_ID": "srv-1"}, "MMOLOVE_SECRET"),
        ({**BASE, "MMOLOVE_RELAY_LISTEN": "0.0.0.0:8787"}, "MMOLOVE_RELAY_INGEST_TOKEN"),
        ({**BASE, "MMOLOVE_RELAY_LISTEN": "nonsense"}, "host:port"),
        ({**BASE, "MMOLOVE_ENDPOINT": "ftp://x"}, "MMOLOVE_ENDPOINT"),
        ({**BASE, "MMOLOVE_RELAY_LOG_FORMAT": "xml"}, "log_format"),
        ({"MMOLOVE_SERVER_ID": "s", "MMOLOVE_SECRET_FILE": "/nonexistent/secret"}, "/nonexistent"),
    ],
)
def test_problems_stop_start_up_with_one_line_naming_the_fix(
    environ: dict[str, str], names: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    message = str(caught.value)
    assert names in message
    assert "\n" not in message


def test_off_loopback_is_allowed_with_a_token() -> None:
    settings = load_settings(
        {
            **BASE,
            "MMOLOVE_RELAY_LISTEN": "0.0.0.0:8787",
            "MMOLOVE_RELAY_INGEST_TOKEN": "t0k-long-enough-16",
        }
    )
    assert not settings.listen.is_loopback


def test_ingest_token_from_a_file_named_in_the_environment(tmp_path: Path) -> None:
    """As a container gets it from a mounted secret; it overrides the file's [ingest] keys,
    and a bad file is refused by the same reader as the signing secret's."""
    (tmp_path / "token").write_text("t0k-from-file-0123456789\n")
    (tmp_path / "relay.toml").write_text('[ingest]\ntoken = "t0k-from-toml-0123456789"\n')
    env = {
        **BASE,
        "MMOLOVE_RELAY_LISTEN": "0.0.0.0:8787",
        "MMOLOVE_RELAY_INGEST_TOKEN_FILE": str(tmp_path / "token"),
    }
    settings = load_settings(env, tmp_path / "relay.toml")
    assert settings.ingest_token is not None
    assert settings.ingest_token.reveal() == "t0k-from-file-0123456789"
    (tmp_path / "token").write_text("\n")
    with pytest.raises(ConfigError, match=r"the ingest token file .*token is empty"):
        load_settings(env)


def test_secret_file_and_systemd_credential(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("from-file\n")
    settings = load_settings(
        {"MMOLOVE_SERVER_ID": "s", "MMOLOVE_SECRET_FILE": str(tmp_path / "secret")}
    )
    assert settings.servers[0].secret.reveal() == "from-file"
    assert settings.servers[0].secret_file == tmp_path / "secret"
    (tmp_path / "mmolove-secret").write_text("from-credential")
    settings = load_settings({"MMOLOVE_SERVER_ID": "s", "CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert settings.servers[0].secret.reveal() == "from-credential"


def test_several_servers_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    (tmp_path / "b.secret").write_text("bbb")
    path.write_text(
        '[[servers]]\nid = "a"\nsecret = "aaa"\nkid = "k"\n'
        f'[[servers]]\nid = "b"\nsecret_file = "{tmp_path / "b.secret"}"\n'
        "[delivery]\nconcurrency = 8\nbackoff_cap_s = 60\n"
    )
    settings = load_settings({}, path)
    assert [(s.server_id, s.secret.reveal(), s.kid) for s in settings.servers] == [
        ("a", "aaa", "k"),
        ("b", "bbb", None),
    ]
    assert settings.concurrency == 8
    assert settings.backoff_cap_s == 60.0


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[delivery]\nconcurency = 8\n", "delivery].concurency"),
        ("[delivery]\nconcurrency = 'eight'\n", "concurrency must be an integer"),
        ("[delivery]\nconcurrency = 0\n", "greater than 0"),
        ("[[servers]]\nid = 'a'\nsecret = 'x'\n[[servers]]\nid = 'a'\nsecret = 'y'\n", "repeat"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_bad_files_are_explained(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_settings({}, path)


def test_describe_masks_every_secret() -> None:
    settings = load_settings({**BASE, "MMOLOVE_RELAY_INGEST_TOKEN": "tok-tok-tok-tok-tok"})
    text = repr(describe(settings)) + repr(settings)
    assert "s3cr3t" not in text
    assert "tok-tok" not in text
    assert "***" in text


def test_parse_listen_forms() -> None:
    assert parse_listen("[::1]:80") == Listen("::1", 80)
    assert parse_listen("[::1]:80").is_loopback
    assert parse_listen("unix:/run/relay.sock").path == Path("/run/relay.sock")
    assert not parse_listen("10.0.0.1:80").is_loopback


def test_non_utf8_secret_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_settings({"MMOLOVE_SERVER_ID": "s", "MMOLOVE_SECRET_FILE": str(tmp_path / "secret")})


@pytest.mark.parametrize("kid", ["a,b", "two words", "ключ", "x" * 129])
def test_kid_that_cannot_go_into_the_header_is_refused(kid: str) -> None:
    with pytest.raises(ConfigError, match="kid of server"):
        load_settings({**BASE, "MMOLOVE_KID": kid})


def test_ipv6_listeners_print_and_dial_in_brackets() -> None:
    assert str(parse_listen("[::1]:8787")) == "[::1]:8787"
    assert base_url("::1", 8787) == "http://[::1]:8787"
    assert base_url("::", 8787) == "http://[::1]:8787"  # a wildcard is dialled on loopback
    assert base_url("0.0.0.0", 80, "https") == "https://127.0.0.1:80"


LONG_SECRET = "s3cr3t-long-enough-for-mmolove"


def notes_of(settings: Settings, event: str) -> list[str]:
    return [note.message for note in settings.notes if note.event == event]


async def test_url_credentials_are_masked_in_check_config_settings_and_errors() -> None:
    endpoint = "https://relay-user:pa55-word@mmolove.example/api/referral/events"
    settings = load_settings({**BASE, "MMOLOVE_ENDPOINT": endpoint})
    assert settings.endpoint == endpoint  # the sender still authenticates with it
    assert describe(settings)["endpoint"] == "https://***@mmolove.example/api/referral/events"
    code, out, err = await cli("check-config", env={**BASE, "MMOLOVE_ENDPOINT": endpoint})
    assert code == 0, err
    assert "pa55-word" not in out + err
    assert "relay-user" not in out + err
    with pytest.raises(ConfigError) as caught:
        load_settings({**BASE, "MMOLOVE_ENDPOINT": "ftp://relay-user:pa55-word@x/"})
    assert "pa55-word" not in str(caught.value)
    assert mask_url("http://[::1") == "***"


async def test_an_ingest_token_under_16_characters_stops_start_up() -> None:
    with pytest.raises(ConfigError, match=r"too short to resist guessing \(15 of at least 16"):
        load_settings({**BASE, "MMOLOVE_RELAY_INGEST_TOKEN": "t" * 15})
    code, _, err = await cli("serve", env={**BASE, "MMOLOVE_RELAY_INGEST_TOKEN": "t"})
    assert code == 3
    assert "ingest token is too short to resist guessing (1 of at least 16" in err
    assert len(err.strip().splitlines()) == 1


def test_a_short_signing_secret_is_warned_about_without_its_value() -> None:
    [message] = notes_of(load_settings(BASE), "config.short_secret")
    assert "short (6 of the 16" in message
    assert "s3cr3t" not in message
    assert (
        notes_of(load_settings({**BASE, "MMOLOVE_SECRET": LONG_SECRET}), "config.short_secret")
        == []
    )


def test_the_secret_is_trimmed_the_same_from_the_variable_and_the_file(tmp_path: Path) -> None:
    """A trailing newline in MMOLOVE_SECRET, or a byte-order mark in the file, once stayed in
    the secret and every delivery was refused with 401."""
    (tmp_path / "secret").write_text("\ufeff" + LONG_SECRET + "\r\n", encoding="utf-8")
    sources = [
        {"MMOLOVE_SERVER_ID": "s", "MMOLOVE_SECRET": LONG_SECRET + "\n"},
        {"MMOLOVE_SERVER_ID": "s", "MMOLOVE_SECRET_FILE": str(tmp_path / "secret")},
    ]
    for environ in sources:
        settings = load_settings(environ)
        assert settings.servers[0].secret.reveal() == LONG_SECRET
        [message] = notes_of(settings, "config.secret_trimmed")
        assert "trailing whitespace" in message
        assert LONG_SECRET not in message
    assert "byte-order mark" in notes_of(load_settings(sources[1]), "config.secret_trimmed")[0]
    assert notes_of(load_settings({**BASE, "MMOLOVE_SECRET": "x"}), "config.secret_trimmed") == []
    with pytest.raises(ConfigError, match="only whitespace"):
        load_settings({**BASE, "MMOLOVE_SECRET": " \n"})


@pytest.mark.parametrize("kind", ["/dev/zero", "fifo", "directory", "large"])
def test_a_secret_file_that_is_not_a_small_regular_file_is_refused(
    tmp_path: Path, kind: str
) -> None:
    """/dev/zero once read 1.1 GB and died with MemoryError; a FIFO hung start-up."""
    path = tmp_path / kind
    if kind == "/dev/zero":
        path = Path(kind)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_text("x" * 5000)
    expected = {
        "/dev/zero": "is a character device, not a regular file",
        "fifo": "is a FIFO, not a regular file",
        "directory": "is a directory, not a regular file",
        "large": "larger than 4096 bytes",
    }[kind]
    with pytest.raises(ConfigError, match=expected):
        load_settings({"MMOLOVE_SERVER_ID": "s", "MMOLOVE_SECRET_FILE": str(path)})


def test_unknown_mmolove_variables_are_warned_about() -> None:
    """MMOLOVE_RELAY_INGEST_TOKN (a typo) would leave ingest open without a word."""
    known = dict.fromkeys(KNOWN_VARIABLES - {"MMOLOVE_RELAY_CONFIG"}, "")
    settings = load_settings({**known, **BASE, "MMOLOVE_RELAY_INGEST_TOKN": "x" * 20})
    [message] = notes_of(settings, "config.unknown_variable")
    assert message.startswith("MMOLOVE_RELAY_INGEST_TOKN is set")
    assert "x" * 20 not in message
    assert {"MMOLOVE_RELAY_INGEST_TOKEN_FILE", "MMOLOVE_RELAY_ALERT_URL"} <= KNOWN_VARIABLES


async def test_serve_logs_each_note_once_without_a_secret(
    spawn: Spawn, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    env = relay_env(
        sandbox.url,
        tmp_path / "outbox.db",
        MMOLOVE_SECRET=SECRET + "\n",
        MMOLOVE_RELAY_TYPO="1",
    )
    relay = await spawn(env).ready()
    unknown = await relay.wait_log("config.unknown_variable")
    assert (unknown["level"], unknown["message"][:18]) == ("warning", "MMOLOVE_RELAY_TYPO")
    trimmed = await relay.wait_log("config.secret_trimmed")
    assert trimmed["level"] == "info"
    # A reload logs them again, and does not take the notes for a setting needing a restart.
    relay.send(signal.SIGHUP)
    reloaded = await relay.wait_log("relay.reloaded")
    assert reloaded["needs_restart"] is None
    await eventually(
        lambda: len(relay.find_logs("config.unknown_variable")) == 2,
        timeout_s=5,
        what="the warning again after the reload",
    )
    assert SECRET not in "".join(relay.stderr)


def test_alert_targets_come_from_the_file_and_one_from_the_environment(tmp_path: Path) -> None:
    url_file = tmp_path / "discord.url"
    url_file.write_text("https://discord.example/api/webhooks/1/t0ken-in-url\n")
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[[alerts]]\nkind = "discord"\nurl_file = "{url_file}"\nname = "ops"\n\n'
        '[[alerts]]\nkind = "webhook"\nurl = "https://hooks.example/x/t0ken-2"\nsecret = "hs"\n\n'
        "[alerting]\nalert_after_s = 60\nalert_rejected_count = 3\n"
    )
    env = {
        **BASE,
        "MMOLOVE_RELAY_ALERT_URL": "https://hooks.slack.example/services/t0ken-3",
        "MMOLOVE_RELAY_ALERT_KIND": "slack",
    }
    settings = load_settings(env, config)
    assert [(a.kind, a.label) for a in settings.alerts] == [
        ("discord", "ops"),
        ("webhook", "webhook https://hooks.example/***"),
        ("slack", "from the environment"),
    ]
    assert settings.alerts[0].url.reveal().endswith("t0ken-in-url")
    assert settings.alerts[1].secret is not None
    assert (settings.alert_after_s, settings.alert_rejected_count) == (60.0, 3)
    assert "t0ken" not in repr(describe(settings))


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        (
            {
                "MMOLOVE_RELAY_ALERT_URL": "https://x.example/t0ken",
                "MMOLOVE_RELAY_ALERT_KIND": "irc",
            },
            "discord, slack, webhook",
        ),
        ({"MMOLOVE_RELAY_ALERT_URL": "ftp://x.example/t0ken"}, "not an http(s) URL"),
        ({"MMOLOVE_RELAY_ALERT_URL_FILE": "/nonexistent/url"}, "/nonexistent/url"),
    ],
)
def test_a_wrong_alert_target_is_one_clear_line_without_its_url(
    environ: dict[str, str], names: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({**BASE, **environ})
    assert names in str(caught.value)
    assert "t0ken" not in str(caught.value)
