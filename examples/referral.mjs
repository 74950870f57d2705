// Report MMOLove referrals through mmolove-relay: Node 18+, no packages (global fetch).
//
// Usage: node referral.mjs ACCOUNT_ID REQUEST_URI [COOKIE_HEADER]
// Set MMOLOVE_RELAY_URL if the relay is not on http://127.0.0.1:8787.
import { appendFileSync, existsSync, readFileSync, renameSync, unlinkSync } from "node:fs";

const RELAY = process.env.MMOLOVE_RELAY_URL || "http://127.0.0.1:8787";
const SPOOL = process.env.MMOLOVE_SPOOL || "mmolove-spool.jsonl";

// Hand one event to the relay. Never throws: registration goes on whatever happens.
async function report(event) {
  const id = event.server_event_id;
  let status, answer;
  try {
    const response = await fetch(`${RELAY}/v1/events`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(event),
      signal: AbortSignal.timeout(3000),
    });
    [status, answer] = [response.status, await response.text()];
  } catch (err) {
    // Refused or timed out: the relay is not running.
    return spool(event, err.cause?.code ?? err.name);
  }
  if (status >= 200 && status < 300) {
    // 202: stored, the relay delivers it. 200: a repeat of a stored event. Done either way.
    console.log(`mmolove: ${id} done ${status}`);
  } else if (status >= 400 && status < 500) {
    // The event is wrong; sending it again would get the same answer. Log, drop.
    console.error(`mmolove: ${id} rejected ${status} ${answer}`);
  } else {
    spool(event, `HTTP ${status}`); // 503: the relay cannot store right now
  }
}

// Keep the event to resend later; safe, as a resend is a duplicate, never a second event.
function spool(event, reason) {
  appendFileSync(SPOOL, JSON.stringify(event) + "\n");
  console.error(`mmolove: ${event.server_event_id} spooled (${reason})`);
}

// Resend spooled events: call it at start-up and then every minute or so.
async function flushSpool() {
  const sending = `${SPOOL}.sending`;
  if (!existsSync(sending)) {
    if (!existsSync(SPOOL)) return;
    renameSync(SPOOL, sending); // events that fail again go to a fresh spool
  }
  for (const line of readFileSync(sending, "utf8").split("\n").filter(Boolean)) {
    await report(JSON.parse(line));
  }
  unlinkSync(sending);
}

// The referral token: ?mmref= on the registration request, else the cookie your landing
// page set. (Express with cookie-parser: req.query.mmref ?? req.cookies.mmref.)
function mmrefFrom(requestUri, cookieHeader) {
  const fromQuery = new URL(requestUri, "http://game.invalid").searchParams.get("mmref");
  const cookie = cookieHeader.split(";").map((c) => c.trim()).find((c) => c.startsWith("mmref="));
  return fromQuery || cookie?.slice("mmref=".length) || null;
}

// Moment 1: the account was just created by a referred player.
async function onRegistration(accountId, token) {
  await report({
    event: "registered",
    token,
    referee_identity: accountId,
    server_event_id: `reg-${accountId}`,
  });
}

// Moment 2: the player reached the milestone that rewards the referrer.
async function onMilestone(accountId, token, milestone) {
  await report({ event: "qualified", token, server_event_id: `qual-${accountId}-${milestone}` });
}

const [accountId = "7842", requestUri = "/register?mmref=mmref-example", cookie = ""] =
  process.argv.slice(2);
await flushSpool();
const token = mmrefFrom(requestUri, cookie);
if (!token) {
  console.log(`mmolove: account ${accountId} was not referred; nothing to report`);
} else {
  await onRegistration(accountId, token); // and store the token with the account
  await onMilestone(accountId, token, "level10"); // days later, with the stored token
}
