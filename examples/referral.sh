#!/usr/bin/env bash
# Report MMOLove referrals through mmolove-relay: bash and curl.
#
# Usage: bash referral.sh ACCOUNT_ID REQUEST_URI [COOKIE_HEADER]
# (In a CGI script the request's parts are $QUERY_STRING and $HTTP_COOKIE.)
# Set MMOLOVE_RELAY_URL if the relay is not on http://127.0.0.1:8787.
set -u
RELAY=${MMOLOVE_RELAY_URL:-http://127.0.0.1:8787}
SPOOL=${MMOLOVE_SPOOL:-mmolove-spool.jsonl}

# report ID JSON: hand one event to the relay. Never fails: registration goes on regardless.
report() {
  local answer status
  answer=$(curl -s --max-time 3 -H 'Content-Type: application/json' \
    --data-binary "$2" -w '\n%{http_code}' "$RELAY/v1/events")
  status=${answer##*$'\n'}
  case $status in
    # 202: stored, the relay delivers it. 200: a repeat of a stored event. Done either way.
    2??) echo "mmolove: $1 done $status" ;;
    # The event is wrong; sending it again would get the same answer. Log, drop.
    4??) echo "mmolove: $1 rejected $status ${answer%$'\n'*}" >&2 ;;
    # Refused or timed out: the relay is not running.
    000) keep "$1" "$2" "relay unreachable" ;;
    # 503: the relay cannot store right now (shutting down, disk full).
    *) keep "$1" "$2" "HTTP $status" ;;
  esac
}

# keep ID JSON REASON: spool the event to resend later; safe, as a resend is a duplicate.
keep() {
  printf '%s %s\n' "$1" "$2" >>"$SPOOL"
  echo "mmolove: $1 spooled ($3)" >&2
}

# Resend spooled events: call it from cron, every minute or so.
flush_spool() {
  local sending=$SPOOL.sending id json
  # Events that fail again go to a fresh spool.
  [ -e "$sending" ] || mv "$SPOOL" "$sending" 2>/dev/null || return 0
  while read -r id json; do report "$id" "$json"; done <"$sending"
  rm -f "$sending"
}

# mmref_from QUERY COOKIE: ?mmref= on the registration request, else the landing page's cookie.
mmref_from() {
  local pair pairs s
  IFS='&' read -ra pairs <<<"$1"
  for pair in "${pairs[@]}"; do
    if [[ $pair == mmref=?* ]]; then
      s=${pair#mmref=} s=${s//+/ }
      printf '%b' "${s//%/\\x}" # URL-decode
      return
    fi
  done
  IFS=';' read -ra pairs <<<"$2"
  for pair in "${pairs[@]}"; do
    pair=${pair# }
    if [[ $pair == mmref=?* ]]; then printf '%s' "${pair#mmref=}"; return; fi
  done
}

# A JSON string; control characters are left for the relay to refuse.
json_string() {
  local s=${1//\\/\\\\}
  printf '"%s"' "${s//\"/\\\"}"
}

# Moment 1: the account was just created by a referred player.
on_registration() { # ACCOUNT_ID TOKEN
  local body="{\"event\":\"registered\",\"token\":$(json_string "$2"),"
  body+="\"referee_identity\":$(json_string "$1"),\"server_event_id\":$(json_string "reg-$1")}"
  report "reg-$1" "$body"
}

# Moment 2: the player reached the milestone that rewards the referrer.
on_milestone() { # ACCOUNT_ID TOKEN MILESTONE
  local body="{\"event\":\"qualified\",\"token\":$(json_string "$2"),"
  body+="\"server_event_id\":$(json_string "qual-$1-$3")}"
  report "qual-$1-$3" "$body"
}

account=${1:-7842} uri=${2:-/register?mmref=mmref-example} cookie=${3:-}
query=
[[ $uri == *\?* ]] && query=${uri#*\?}

flush_spool
token=$(mmref_from "$query" "$cookie")
if [ -z "$token" ]; then
  echo "mmolove: account $account was not referred; nothing to report"
  exit 0
fi
on_registration "$account" "$token" # and store the token with the account
on_milestone "$account" "$token" level10 # days later, with the stored token
