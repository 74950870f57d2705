#!/usr/bin/env python3
"""Report MMOLove referrals through mmolove-relay: Python 3, standard library only (urllib).

Usage: python3 referral.py ACCOUNT_ID REQUEST_URI [COOKIE_HEADER]
Set MMOLOVE_RELAY_URL if the relay is not on http://127.0.0.1:8787.
"""

import json
import os
import sys
import urllib.error
import urllib.request
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

RELAY = os.environ.get("MMOLOVE_RELAY_URL", "http://127.0.0.1:8787")
SPOOL = os.environ.get("MMOLOVE_SPOOL", "mmolove-spool.jsonl")


def report(event):
    """Hand one event to the relay. Never raises: registration goes on whatever happens."""
    name = event["server_event_id"]
    request = urllib.request.Request(
        RELAY + "/v1/events",
        data=json.dumps(event).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            # 202: stored, the relay delivers it. 200: a repeat of a stored event. Done either way.
            print(f"mmolove: {name} done {response.status}")
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500:
            # The event is wrong; sending it again would get the same answer. Log, drop.
            answer = exc.read().decode(errors="replace")
            print(f"mmolove: {name} rejected {exc.code} {answer}", file=sys.stderr)
        else:  # 503: the relay cannot store right now (shutting down, disk full)
            spool(event, f"HTTP {exc.code}")
    except OSError as exc:  # refused or timed out: the relay is not running
        spool(event, str(exc))


def spool(event, reason):
    """Keep the event to resend later; safe, as a resend is a duplicate, never a second event."""
    with open(SPOOL, "a") as f:
        f.write(json.dumps(event) + "\n")
    print(f"mmolove: {event['server_event_id']} spooled ({reason})", file=sys.stderr)


def flush_spool():
    """Resend spooled events: call it at start-up and then every minute or so."""
    sending = SPOOL + ".sending"
    if not os.path.exists(sending):
        try:
            os.rename(SPOOL, sending)  # events that fail again go to a fresh spool
        except FileNotFoundError:
            return
    with open(sending) as f:
        for line in f:
            report(json.loads(line))
    os.remove(sending)


def mmref_from(environ):
    """The referral token of a WSGI request: ?mmref=, else the cookie your landing page set.

    (Django: request.GET.get("mmref") or request.COOKIES.get("mmref").)
    """
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if query.get("mmref"):
        return query["mmref"][0]
    cookie = SimpleCookie(environ.get("HTTP_COOKIE", ""))
    return cookie["mmref"].value if "mmref" in cookie else None


def on_registration(account_id, token):
    """Moment 1: the account was just created by a referred player."""
    report(
        {
            "event": "registered",
            "token": token,
            "referee_identity": account_id,
            "server_event_id": f"reg-{account_id}",
        }
    )


def on_milestone(account_id, token, milestone):
    """Moment 2: the player reached the milestone that rewards the referrer."""
    event_id = f"qual-{account_id}-{milestone}"
    report({"event": "qualified", "token": token, "server_event_id": event_id})


def main(account_id="7842", request_uri="/register?mmref=mmref-example", cookie=""):
    flush_spool()
    environ = {"QUERY_STRING": urlsplit(request_uri).query, "HTTP_COOKIE": cookie}
    token = mmref_from(environ)
    if not token:
        print(f"mmolove: account {account_id} was not referred; nothing to report")
        return
    on_registration(account_id, token)  # and store the token with the account
    on_milestone(account_id, token, "level10")  # days later, with the stored token


if __name__ == "__main__":
    main(*sys.argv[1:])
