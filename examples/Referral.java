// Report MMOLove referrals through mmolove-relay: Java 11+, the JDK only (java.net.http).
//
// Build and run:  javac -d build Referral.java && java -cp build Referral ACCOUNT_ID REQUEST_URI [COOKIE_HEADER]
// (Or without the build step: java Referral.java ACCOUNT_ID REQUEST_URI [COOKIE_HEADER].)
// Set MMOLOVE_RELAY_URL if the relay is not on http://127.0.0.1:8787.
import java.io.IOException;
import java.net.URI;
import java.net.URLDecoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.time.Duration;

public final class Referral {
    static final URI EVENTS = URI.create(getenv("MMOLOVE_RELAY_URL", "http://127.0.0.1:8787") + "/v1/events");
    static final Path SPOOL = Path.of(getenv("MMOLOVE_SPOOL", "mmolove-spool.jsonl"));
    static final Duration TIMEOUT = Duration.ofSeconds(3);
    // HTTP/1.1: with the default, HTTP/2, the client first asks a plain-http server to upgrade.
    static final HttpClient HTTP = HttpClient.newBuilder()
            .version(HttpClient.Version.HTTP_1_1)
            .connectTimeout(TIMEOUT)
            .build();

    // Hand one event (its JSON) to the relay. Never throws: registration goes on whatever happens.
    static void report(String id, String json) {
        HttpRequest request = HttpRequest.newBuilder(EVENTS)
                .timeout(TIMEOUT)
                .header("Content-Type", "application/json")
                .POST(HttpRequest.BodyPublishers.ofString(json, StandardCharsets.UTF_8))
                .build();
        HttpResponse<String> response;
        try {
            response = HTTP.send(request, HttpResponse.BodyHandlers.ofString());
        } catch (IOException e) { // refused or timed out: the relay is not running
            keep(id, json, "relay unreachable: " + e.getClass().getSimpleName());
            return;
        } catch (InterruptedException e) { // the game server is stopping: resend on next start
            Thread.currentThread().interrupt();
            keep(id, json, "interrupted");
            return;
        }
        int status = response.statusCode();
        if (status >= 200 && status < 300) {
            // 202: stored, the relay delivers it. 200: a repeat of a stored event. Done either way.
            System.out.println("mmolove: " + id + " done " + status);
        } else if (status >= 400 && status < 500) {
            // The event is wrong; sending it again would get the same answer. Log, drop.
            System.err.println("mmolove: " + id + " rejected " + status + " " + response.body());
        } else {
            keep(id, json, "HTTP " + status); // 503: the relay cannot store right now
        }
    }

    // Spool the event to resend later; safe, as a resend is a duplicate, never a second event.
    static void keep(String id, String json, String reason) {
        try {
            Files.writeString(SPOOL, json + "\n", StandardCharsets.UTF_8,
                    StandardOpenOption.CREATE, StandardOpenOption.APPEND);
        } catch (IOException e) {
            System.err.println("mmolove: " + id + " lost: cannot spool to " + SPOOL + ": " + e);
            return;
        }
        System.err.println("mmolove: " + id + " spooled (" + reason + ")");
    }

    // Resend spooled events: call it at start-up and then every minute or so.
    static void flushSpool() {
        Path sending = Path.of(SPOOL + ".sending");
        try {
            if (Files.notExists(sending)) {
                if (Files.notExists(SPOOL)) {
                    return;
                }
                Files.move(SPOOL, sending); // events that fail again go to a fresh spool
            }
            for (String line : Files.readAllLines(sending, StandardCharsets.UTF_8)) {
                String id = idOf(line);
                if (id != null) {
                    report(id, line);
                } else if (!line.isBlank()) {
                    System.err.println("mmolove: dropped a spool line that is not an event: " + line);
                }
            }
            Files.delete(sending);
        } catch (IOException e) {
            System.err.println("mmolove: cannot resend " + sending + " (" + e + "); kept for the next try");
        }
    }

    // The referral token: ?mmref= on the registration request, else the cookie your landing
    // page set. (A servlet: request.getParameter("mmref"), else the mmref in getCookies().)
    static String mmrefFrom(String requestUri, String cookieHeader) {
        int mark = requestUri.indexOf('?');
        String query = mark < 0 ? "" : requestUri.substring(mark + 1).split("#", 2)[0];
        String fromQuery = valueIn(query.split("&"), "mmref");
        if (fromQuery != null) {
            try {
                return URLDecoder.decode(fromQuery, StandardCharsets.UTF_8);
            } catch (IllegalArgumentException e) { // a stray %: take the value as it is
                return fromQuery;
            }
        }
        return valueIn(cookieHeader.split(";"), "mmref");
    }

    // The non-empty value of NAME=value among pairs, or null.
    static String valueIn(String[] pairs, String name) {
        for (String pair : pairs) {
            pair = pair.strip();
            if (pair.startsWith(name + "=") && pair.length() > name.length() + 1) {
                return pair.substring(name.length() + 1);
            }
        }
        return null;
    }

    // Moment 1: the account was just created by a referred player.
    static void onRegistration(String accountId, String token) {
        String id = "reg-" + accountId;
        report(id, json("event", "registered", "token", token,
                "referee_identity", accountId, "server_event_id", id));
    }

    // Moment 2: the player reached the milestone that rewards the referrer.
    static void onMilestone(String accountId, String token, String milestone) {
        String id = "qual-" + accountId + "-" + milestone;
        report(id, json("event", "qualified", "token", token, "server_event_id", id));
    }

    // A JSON object of string fields, "key", "value", ... (the JDK has no JSON library).
    static String json(String... keysAndValues) {
        StringBuilder out = new StringBuilder("{");
        for (int i = 0; i < keysAndValues.length; i += 2) {
            out.append(i == 0 ? "" : ",").append(quote(keysAndValues[i]));
            out.append(':').append(quote(keysAndValues[i + 1]));
        }
        return out.append('}').toString();
    }

    static String quote(String s) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') {
                out.append('\\').append(c);
            } else if (c < ' ') {
                out.append(String.format("\\u%04x", (int) c));
            } else {
                out.append(c);
            }
        }
        return out.append('"').toString();
    }

    // The server_event_id of a spooled body, as json() wrote it (escapes kept), or null. The
    // spool holds each body exactly as first sent, so only the id is read back. Inside a
    // value every quote is escaped, so the unescaped "server_event_id":" can only be the key.
    static String idOf(String json) {
        String key = "\"server_event_id\":\"";
        int start = json.indexOf(key);
        if (start < 0) {
            return null;
        }
        start += key.length();
        for (int at = start; at < json.length(); at++) {
            if (json.charAt(at) == '\\') {
                at++; // skip the escaped character
            } else if (json.charAt(at) == '"') {
                return json.substring(start, at);
            }
        }
        return null;
    }

    public static void main(String[] args) {
        String accountId = args.length > 1 ? args[0] : "7842";
        String requestUri = args.length > 1 ? args[1] : "/register?mmref=mmref-example";
        String cookie = args.length > 2 ? args[2] : "";
        flushSpool();
        String token = mmrefFrom(requestUri, cookie);
        if (token == null || token.isEmpty()) {
            System.out.println("mmolove: account " + accountId + " was not referred; nothing to report");
            return;
        }
        onRegistration(accountId, token); // and store the token with the account
        onMilestone(accountId, token, "level10"); // days later, with the stored token
    }

    static String getenv(String name, String fallback) {
        String value = System.getenv(name);
        return value == null || value.isEmpty() ? fallback : value;
    }
}
