"""``Settings``, the one table of settings: each field declares its type, default, TOML section
and key, environment variables and help once. The allowed keys, the environment list,
``check-config``, ``serve --help`` and the example file are derived from it (``keys.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.config.sources import SOURCE_KEYS, SourceConfig
from relay.config.values import (
    CREDENTIAL_NAME,
    DEFAULT_ENDPOINT,
    AlertTarget,
    ConfigNote,
    Listen,
    LogFormat,
    Secret,
    ServerConfig,
    parse_endpoint,
    parse_hosts,
    parse_listen,
    parse_log_format,
    parse_path,
)

Parser = Callable[[object, str], Any]
SECTIONS = ("", "servers", "ingest", "delivery", "outbox", "sources", "alerts", "alerting")


@dataclass(frozen=True, slots=True)
class Key:
    """Where a setting is read from and what it means, kept in its field's metadata."""

    section: str  # a SECTIONS name; "" is the top level; servers, sources, alerts: [[arrays]]
    keys: tuple[str, ...]  # keys in the file; () is the attribute's own name
    env: tuple[str, ...]  # environment variables, over the file
    help: str  # one sentence: serve --help and the example file
    more: str = ""  # the example file only: how it behaves, why the default
    default_text: str | None = None  # the default in words, where the value alone would mislead
    example: str | None = None  # TOML shown instead of `key = default` (# for commented)
    parse: Parser | None = None  # text or TOML value -> the value; None: int, float or bool
    composite: bool = False  # several keys or variables, read by loading's own code


def setting(
    default: object,
    section: str,
    help: str,
    *,
    keys: tuple[str, ...] = (),
    env: tuple[str, ...] | str = (),
    **rest: Any,
) -> Any:
    """A ``Settings`` field: its default, with the rest of its row as metadata."""
    env = (env,) if isinstance(env, str) else env
    return field(default=default, metadata={"key": Key(section, keys, env, help, **rest)})


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the daemon needs, validated; setting names carry their units."""

    endpoint: str = setting(
        DEFAULT_ENDPOINT,
        "",
        "the full URL events are POSTed to; redirects are never followed",
        env="MMOLOVE_ENDPOINT",
        parse=parse_endpoint,
    )
    log_format: LogFormat | None = setting(
        None,
        "",
        '"json" (journald, containers) or "console"',
        env="MMOLOVE_RELAY_LOG_FORMAT",
        default_text="json, or console on a terminal",
        example='# log_format = "json"',
        parse=parse_log_format,
    )
    ca_file: Path | None = setting(
        None,
        "",
        "a CA bundle to trust for the endpoint's TLS certificate, besides the system store",
        default_text="the system store only",
        example='# ca_file = "/etc/ssl/certs/my-ca.pem"',
        parse=parse_path,
    )
    servers: tuple[ServerConfig, ...] = setting(
        (),
        "servers",
        "the MMOLove servers the relay signs for: one [[servers]] entry each",
        keys=("id", "secret", "secret_file", "kid"),
        env=("MMOLOVE_SERVER_ID", "MMOLOVE_SECRET", "MMOLOVE_SECRET_FILE", "MMOLOVE_KID"),
        more="With MMOLOVE_SERVER_ID set, the environment describes the single server instead\n"
        "(an entry with the same id may still give its secret_file or kid). Secret precedence:\n"
        "MMOLOVE_SECRET, MMOLOVE_SECRET_FILE (single server only), then `secret`, then\n"
        f"`secret_file`, then the systemd credential $CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME}\n"
        f"({CREDENTIAL_NAME}-<id> when several servers are configured). Prefer files to\n"
        "inline secrets.",
        default_text="none (required); the secret under systemd: "
        f"$CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME}",
        example='[[servers]]\nid = "srv-123"\nsecret_file = "/etc/mmolove-relay/srv-123.secret"\n'
        '# secret = "..."        # inline; the file is then as sensitive as the secret\n'
        '# kid = "2026-11"       # optional key id sent as kid= in the signature header',
        composite=True,
    )
    # [ingest]
    listen: Listen = setting(
        Listen(),
        "ingest",
        "where ingest listens: host:port, [v6]:port or unix:/path",
        env="MMOLOVE_RELAY_LISTEN",
        more="Off loopback a token is required and the relay refuses to start without one.",
        default_text="127.0.0.1:8787",
        example='listen = "127.0.0.1:8787"',
        parse=parse_listen,
    )
    ingest_token: Secret | None = setting(
        None,
        "ingest",
        "the bearer token clients must send, or a file holding it; required off loopback",
        keys=("token", "token_file"),
        env=("MMOLOVE_RELAY_INGEST_TOKEN", "MMOLOVE_RELAY_INGEST_TOKEN_FILE"),
        more="Either variable overrides both keys. A file: a mounted secret or a systemd\n"
        "credential. At least 16 characters.",
        default_text="none",
        example='# token_file = "/etc/mmolove-relay/ingest.token"\n'
        '# token = "..."         # inline; the file is then as sensitive as the token',
        composite=True,
    )
    allowed_hosts: tuple[str, ...] = setting(
        (),
        "ingest",
        "extra host names ingest answers under, besides loopback names and the listen "
        "address (DNS-rebinding defence)",
        env="MMOLOVE_RELAY_ALLOWED_HOSTS",
        more="Without a token, ingest answers only under loopback names (localhost, 127.0.0.1,\n"
        "[::1]) and its listen address: a web page that re-resolves its own name to 127.0.0.1\n"
        "gets 421. Add the names your game servers use for this host: bare names, without\n"
        "scheme or port; the variable takes them comma-separated.",
        default_text="none: loopback names and the listen address",
        example='# allowed_hosts = ["relay.lan"]',
        parse=parse_hosts,
    )
    max_body_bytes: int = setting(
        1024 * 1024,
        "ingest",
        "the largest request body accepted, single event or batch (413 beyond)",
    )
    max_batch: int = setting(500, "ingest", "the most events in one POST /v1/events/batch")
    allow_extra_fields: bool = setting(
        False,
        "ingest",
        "accept fields MMOLove does not document; they are kept in the signed body",
    )
    min_free_bytes: int = setting(
        64 * 1024 * 1024,
        "ingest",
        "below this much free disk space ingest answers 503 + Retry-After instead of storing",
    )
    max_connections: int = setting(
        4096,
        "ingest",
        "connections served at once (hostile or broken clients); one more is answered 503",
        more="Lowered to fit the open-file limit, which the relay raises to its hard limit.",
    )
    header_timeout_s: float = setting(
        15.0,
        "ingest",
        "a connection must send a complete request head this soon after it opens or after "
        "its last answer, else it is closed",
        more="Against slowloris; also how long an idle keep-alive connection stays open.",
    )
    body_timeout_s: float = setting(
        30.0, "ingest", "a request body must arrive this soon (408 beyond)"
    )
    max_body_bytes_in_flight: int = setting(
        16 * 1024 * 1024,
        "ingest",
        "bytes of request bodies read at once, all connections together (503 beyond)",
    )
    lock_timeout_s: float = setting(
        1.0,
        "ingest",
        "how long a write waits while another process holds the outbox's write lock before "
        "ingest answers 503 + Retry-After",
        more="Another process: a backup, an sqlite3 shell; SQLite's own wait is 5 s. The\n"
        "outbox has one writer, so delivery's writes wait as long, and retry by themselves.",
    )
    # [delivery]
    concurrency: int = setting(
        4,
        "delivery",
        "attempts in flight at once; also the size of the HTTP connection pool",
    )
    connect_timeout_s: float = setting(5.0, "delivery", "budget for connecting to MMOLove")
    send_timeout_s: float = setting(
        15.0, "delivery", "budget for one whole attempt (connect, send, answer)"
    )
    max_age_s: float = setting(
        7 * 24 * 3600.0,
        "delivery",
        "an event not delivered this long after ingest is dead-lettered as expired (7 days)",
    )
    backoff_base_s: float = setting(
        2.0,
        "delivery",
        "retry n waits uniform(0, min(backoff_cap_s, backoff_base_s * 2^(n-1))): full jitter",
    )
    backoff_cap_s: float = setting(600.0, "delivery", "the longest wait between retries")
    retry_after_cap_s: float = setting(
        3600.0,
        "delivery",
        "MMOLove's Retry-After (on 429 or 5xx) is honoured up to this long for the event "
        "that got it; a larger value is taken as this",
    )
    breaker_retry_after_cap_s: float = setting(
        300.0,
        "delivery",
        "...and up to this long for the shared circuit breaker, which holds back every "
        "other event too",
        more="One answer must not halt the whole relay for an hour (5 minutes).",
    )
    max_send_rate_per_s: float = setting(
        100.0,
        "delivery",
        "the most attempts started per second (a recovering MMOLove sees a bounded rate)",
    )
    breaker_failures: int = setting(
        5, "delivery", "retryable failures in a row that open the shared circuit breaker"
    )
    breaker_cooldown_s: float = setting(
        10.0,
        "delivery",
        "how long the open breaker waits before one probe (doubles per failed probe, up to "
        "backoff_cap_s)",
    )
    pause_probe_s: float = setting(
        60.0, "delivery", "a server paused by a 401 or a redirect is probed this often"
    )
    drain_timeout_s: float = setting(
        10.0, "delivery", "on SIGTERM, how long in-flight attempts may take before cancelled"
    )
    # [outbox]
    db_path: Path = setting(
        Path("mmolove-relay.db"),
        "outbox",
        "the SQLite outbox file, created 0600",
        keys=("path",),
        env="MMOLOVE_RELAY_DB",
        default_text="$STATE_DIRECTORY/outbox.db, else ./mmolove-relay.db",
        example='# path = "/var/lib/mmolove-relay/outbox.db"',
        composite=True,
    )
    db_url: str | None = setting(
        None,
        "outbox",
        "a postgresql:// URL: a database a fleet of relays shares, instead of the file",
        keys=("url",),
        env="MMOLOVE_RELAY_DB",
        more='See the README, "A fleet: one outbox for many relays".',
        default_text="none: the SQLite file",
        example='# url = "postgresql://relay@db.internal:5432/relay"',
        composite=True,
    )
    db_password: Secret | None = setting(
        None,
        "outbox",
        "a file holding the PostgreSQL password",
        keys=("password_file",),
        env="MMOLOVE_RELAY_DB_PASSWORD_FILE",
        default_text="none: libpq's PGPASSWORD and ~/.pgpass apply",
        example='# password_file = "/run/secrets/db-password"',
        composite=True,
    )
    retention_s: float = setting(
        7 * 24 * 3600.0,
        "outbox",
        "delivered events and delivery-log rows older than this are pruned; dead ones stay",
    )
    ledger_retention_s: float = setting(
        180 * 24 * 3600.0,
        "outbox",
        "a compact record of each pruned delivered event stays this long",
        more="Ids, token, player, outcome, MMOLove's referral and state: so\n"
        "`mmolove-relay player` answers for months.",
    )
    max_outbox_bytes: int = setting(
        0,
        "outbox",
        "above this many bytes (file and WAL) ingest answers 503 + Retry-After, like low "
        "disk, and the outbox_full alert fires",
        default_text="unlimited",
        example="# max_outbox_bytes = 10737418240",
    )
    rejected_keep: int = setting(
        10_000, "outbox", "rejected inputs (4xx) kept for `mmolove-relay rejected`: the newest"
    )
    reserve_bytes: int = setting(
        8 * 1024 * 1024,
        "outbox",
        "disk space preallocated beside the outbox (outbox.db.reserve)",
        more="When the disk fills up it is released, so the outcomes of attempts already sent\n"
        "and `purge` can still be written; ingest and new deliveries wait until the disk has\n"
        "room for it and a quarter more.",
    )
    # [[sources]]: game databases watched for registrations and milestones
    game_sources: tuple[SourceConfig, ...] = setting(
        (),
        "sources",
        "game databases the relay watches, so the game server needs no code: each entry "
        "polls one read-only query and stores the registered or qualified events it finds",
        keys=SOURCE_KEYS,
        more="Each poll runs read-only under statement_timeout_s; grant the user SELECT only.\n"
        "A registered query takes :cursor and :limit and returns referee_identity, token,\n"
        "cursor (and ts); a qualified one takes :players (IN (:players)) and returns\n"
        "referee_identity. Keys: reg-<player> and qual-<player>-<milestone>, as the examples'.\n"
        "`mmolove-relay sources try NAME` runs one poll and stores nothing.",
        default_text="none",
        example="# [[sources]]\n"
        '# name = "registrations"             # shown in status, metrics, alerts\n'
        '# produces = "registered"             # registered or qualified\n'
        '# url = "mysql://relay@127.0.0.1:3306/acore_auth"   # postgresql://, sqlite:////path\n'
        '# password_file = "/etc/mmolove-relay/game-db.password"\n'
        '# query = "SELECT id AS cursor, account AS referee_identity, token FROM mmolove_referrals'
        ' WHERE id > :cursor ORDER BY id LIMIT :limit"\n'
        "# interval_s = 10\n# statement_timeout_s = 5\n"
        '# server_id = "srv-1"                 # when several servers are configured\n'
        "# start_cursor = 0                    # the first poll's :cursor\n"
        '#\n# [[sources]]\n# name = "level20"\n# produces = "qualified"\n'
        '# milestone = "level20"               # the key: qual-<player>-level20\n'
        '# url = "mysql://relay@127.0.0.1:3306/acore_characters"\n'
        '# query = "SELECT DISTINCT account AS referee_identity FROM characters'
        ' WHERE account IN (:players) AND level >= 20"\n'
        "# players_per_poll = 1000            # watched players asked about a poll, in turn",
        composite=True,
    )
    # [[alerts]], then [alerting]: when each condition fires
    alerts: tuple[AlertTarget, ...] = setting(
        (),
        "alerts",
        "alert targets: Discord, Slack or a generic JSON webhook, as many as you like",
        keys=("kind", "url", "url_file", "secret", "secret_file", "name"),
        env=("MMOLOVE_RELAY_ALERT_URL", "MMOLOVE_RELAY_ALERT_URL_FILE", "MMOLOVE_RELAY_ALERT_KIND"),
        more="The variables give one more target (kind: webhook unless set). A URL holds its\n"
        "token: keep it in url_file; it is masked in logs, errors, metrics and check-config.\n"
        "`mmolove-relay alert-test` proves them.",
        default_text="none; MMOLOVE_RELAY_ALERT_KIND: webhook",
        example='# [[alerts]]\n# kind = "discord"                   # discord, slack or webhook\n'
        '# url_file = "/etc/mmolove-relay/discord.url"\n'
        '# name = "ops channel"               # shown in status and logs, not the masked URL\n'
        '#\n# [[alerts]]\n# kind = "webhook"\n'
        '# url = "https://ops.example.com/hooks/mmolove"\n'
        '# secret_file = "/etc/mmolove-relay/hook.secret"  # webhook only: '
        "X-MMOLove-Relay-Signature\n"
        '#                                                 # t=..,v1=sha256=.. over "<t>.<body>"',
        composite=True,
    )
    alert_after_s: float = setting(
        300.0,
        "alerting",
        "a circuit open longer than this (a paused server alerts within seconds)",
    )
    alert_pending_age_s: float = setting(
        900.0, "alerting", "the oldest pending event older than this"
    )
    alert_rejected_count: int = setting(
        10,
        "alerting",
        "this many rejected inputs within alert_rejected_window_s (a game-server bug)",
    )
    alert_rejected_window_s: float = setting(
        300.0, "alerting", "the window alert_rejected_count counts rejected inputs in"
    )
    alert_reminder_s: float = setting(
        3600.0, "alerting", "while a condition lasts, a reminder at most this often"
    )
    alert_resolve_after_s: float = setting(
        120.0,
        "alerting",
        "a condition clear this long is resolved (one message): no flapping",
    )
    # Not settings: how often alert rules run (tests shorten it), and the load's warnings,
    # logged by the daemon at start-up and on reload.
    alert_every_s: float = 1.0
    notes: tuple[ConfigNote, ...] = ()

    def server(self, server_id: str) -> ServerConfig | None:
        return next((s for s in self.servers if s.server_id == server_id), None)
