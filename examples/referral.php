<?php
// Report MMOLove referrals through mmolove-relay: PHP 7.4+, no extensions (HTTP streams).
//
// Usage: php referral.php ACCOUNT_ID REQUEST_URI [COOKIE_HEADER]
// Set MMOLOVE_RELAY_URL if the relay is not on http://127.0.0.1:8787.

define('MMOLOVE_RELAY', getenv('MMOLOVE_RELAY_URL') ?: 'http://127.0.0.1:8787');
define('MMOLOVE_SPOOL', getenv('MMOLOVE_SPOOL') ?: 'mmolove-spool.jsonl');

// Moment 1: the account was just created. Returns the token to store with the account.
function on_registration(string $accountId): ?string
{
    // ?mmref= on the registration request, else the cookie your landing page set.
    $token = $_GET['mmref'] ?? $_COOKIE['mmref'] ?? null;
    if (!is_string($token) || $token === '') {
        return null; // not a referred player
    }
    mmolove_report([
        'event' => 'registered',
        'token' => $token,
        'referee_identity' => $accountId,
        'server_event_id' => "reg-$accountId",
    ]);
    return $token;
}

// Moment 2: the player reached the milestone that rewards the referrer.
function on_milestone(string $accountId, string $token, string $milestone): void
{
    mmolove_report([
        'event' => 'qualified',
        'token' => $token,
        'server_event_id' => "qual-$accountId-$milestone",
    ]);
}

// Hand one event to the relay. Never throws: registration goes on whatever happens.
function mmolove_report(array $event): void
{
    $context = stream_context_create(['http' => [
        'method' => 'POST',
        'header' => "Content-Type: application/json\r\n",
        'content' => json_encode($event, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE),
        'timeout' => 3,
        'ignore_errors' => true, // return 4xx/5xx answers instead of failing
    ]]);
    $answer = @file_get_contents(MMOLOVE_RELAY . '/v1/events', false, $context);
    $status = $answer === false ? 0 : (int) explode(' ', $http_response_header[0])[1];
    $id = $event['server_event_id'];
    if ($status >= 200 && $status < 300) {
        // 202: stored, the relay delivers it. 200: a repeat of a stored event. Done either way.
        echo "mmolove: $id done $status\n";
    } elseif ($status >= 400 && $status < 500) {
        // The event is wrong; sending it again would get the same answer. Log, drop.
        error_log("mmolove: $id rejected $status $answer");
    } else {
        // 0: refused or timed out (the relay is not running); 503: it cannot store right now.
        mmolove_spool($event, $status ? "HTTP $status" : 'relay unreachable');
    }
}

// Keep the event to resend later; safe, as a resend is a duplicate, never a second event.
function mmolove_spool(array $event, string $reason): void
{
    file_put_contents(MMOLOVE_SPOOL, json_encode($event) . "\n", FILE_APPEND | LOCK_EX);
    error_log("mmolove: {$event['server_event_id']} spooled ($reason)");
}

// Resend spooled events: call it from a cron job or a timer, every minute or so.
function mmolove_flush_spool(): void
{
    $sending = MMOLOVE_SPOOL . '.sending';
    // Events that fail again go to a fresh spool.
    if (!file_exists($sending) && !@rename(MMOLOVE_SPOOL, $sending)) {
        return; // nothing spooled
    }
    foreach (file($sending, FILE_IGNORE_NEW_LINES | FILE_SKIP_EMPTY_LINES) as $line) {
        mmolove_report(json_decode($line, true));
    }
    unlink($sending);
}

// The demo: one referred registration, then its milestone. Under php-fpm the web server
// fills $_GET and $_COOKIE; here they come from the command line.
[, $accountId, $requestUri, $cookie] = $argv + [null, '7842', '/register?mmref=mmref-example', ''];
parse_str(parse_url($requestUri, PHP_URL_QUERY) ?? '', $_GET);
parse_str(str_replace('; ', '&', $cookie), $_COOKIE);

mmolove_flush_spool();
$token = on_registration($accountId);
if ($token === null) {
    echo "mmolove: account $accountId was not referred; nothing to report\n";
    exit(0);
}
on_milestone($accountId, $token, 'level10'); // days later, with the stored token
