// Report MMOLove referrals through mmolove-relay: C++17 and libcurl, nothing else.
//
// Build and run:  g++ -std=c++17 -o referral referral.cpp -lcurl && ./referral ACCOUNT_ID REQUEST_URI [COOKIE_HEADER]
// (Debian and Ubuntu: apt install g++ libcurl4-openssl-dev.)
// Set MMOLOVE_RELAY_URL if the relay is not on http://127.0.0.1:8787.
#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <initializer_list>
#include <iostream>
#include <string>
#include <utility>

namespace {

std::string getenv_or(const char* name, const char* fallback) {
    const char* value = std::getenv(name);
    return value && *value ? value : fallback;
}

const std::string relay = getenv_or("MMOLOVE_RELAY_URL", "http://127.0.0.1:8787");
const std::string spool = getenv_or("MMOLOVE_SPOOL", "mmolove-spool.jsonl");

// Spool the event to resend later; safe, as a resend is a duplicate, never a second event.
void keep(const std::string& id, const std::string& json, const std::string& reason) {
    std::ofstream out(spool, std::ios::app);
    out << json << '\n' << std::flush;
    if (!out) {
        std::cerr << "mmolove: " << id << " lost: cannot spool to " << spool << '\n';
        return;
    }
    std::cerr << "mmolove: " << id << " spooled (" << reason << ")\n";
}

size_t collect(char* data, size_t size, size_t count, void* answer) {
    static_cast<std::string*>(answer)->append(data, size * count);
    return size * count;
}

// Hand one event (its JSON) to the relay. Never throws: registration goes on whatever happens.
void report(const std::string& id, const std::string& json) {
    CURL* curl = curl_easy_init();
    if (!curl) {
        keep(id, json, "libcurl could not start");
        return;
    }
    std::string answer;
    curl_slist* headers = curl_slist_append(nullptr, "Content-Type: application/json");
    headers = curl_slist_append(headers, "Expect:"); // no 100-continue wait for a longer body
    const std::string url = relay + "/v1/events";
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, json.c_str());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, static_cast<long>(json.size()));
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, 3L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L); // a game server has threads: no SIGALRM timeouts
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &answer);
    const CURLcode sent = curl_easy_perform(curl);
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(headers);
    curl_easy_cleanup(curl);

    if (sent != CURLE_OK) { // refused or timed out: the relay is not running
        keep(id, json, curl_easy_strerror(sent));
    } else if (status >= 200 && status < 300) {
        // 202: stored, the relay delivers it. 200: a repeat of a stored event. Done either way.
        std::cout << "mmolove: " << id << " done " << status << std::endl;
    } else if (status >= 400 && status < 500) {
        // The event is wrong; sending it again would get the same answer. Log, drop.
        std::cerr << "mmolove: " << id << " rejected " << status << ' ' << answer << '\n';
    } else {
        keep(id, json, "HTTP " + std::to_string(status)); // 503: the relay cannot store right now
    }
}

// The server_event_id of a spooled body, as json() wrote it (escapes kept), or "". The
// spool holds each body exactly as first sent, so only the id is read back. Inside a value
// every quote is escaped, so the unescaped "server_event_id":" can only be the key.
std::string id_of(const std::string& json) {
    const std::string key = "\"server_event_id\":\"";
    const size_t start = json.find(key);
    if (start == std::string::npos) return "";
    for (size_t at = start + key.size(); at < json.size(); ++at) {
        if (json[at] == '\\') ++at; // skip the escaped character
        else if (json[at] == '"') return json.substr(start + key.size(), at - start - key.size());
    }
    return "";
}

// Resend spooled events: call it at start-up and then every minute or so.
void flush_spool() {
    const std::string sending = spool + ".sending";
    // Events that fail again go to a fresh spool.
    if (!std::ifstream(sending) && std::rename(spool.c_str(), sending.c_str()) != 0) {
        return; // nothing spooled
    }
    std::ifstream in(sending);
    for (std::string line; std::getline(in, line);) {
        const std::string id = id_of(line);
        if (!id.empty()) report(id, line);
        else if (!line.empty()) std::cerr << "mmolove: dropped a spool line, not an event: " << line << '\n';
    }
    in.close();
    std::remove(sending.c_str());
}

// The non-empty value of NAME=value among pairs separated by SEPARATOR, or "".
std::string value_in(const std::string& pairs, char separator, const std::string& name) {
    for (size_t at = 0; at < pairs.size();) {
        const size_t end = std::min(pairs.find(separator, at), pairs.size());
        const size_t begin = pairs.find_first_not_of(' ', at);
        const std::string pair = begin < end ? pairs.substr(begin, end - begin) : "";
        if (pair.size() > name.size() + 1 && pair.compare(0, name.size() + 1, name + "=") == 0) {
            return pair.substr(name.size() + 1);
        }
        at = end + 1;
    }
    return "";
}

// A query value: + is a space, %XX a byte; a stray % is kept as it is.
std::string url_decode(const std::string& s) {
    const auto hex = [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; };
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '+') {
            out += ' ';
        } else if (s[i] == '%' && i + 2 < s.size() && hex(s[i + 1]) && hex(s[i + 2])) {
            out += static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16));
            i += 2;
        } else {
            out += s[i];
        }
    }
    return out;
}

// The referral token: ?mmref= on the registration request, else the cookie your landing
// page set.
std::string mmref_from(const std::string& request_uri, const std::string& cookie_header) {
    const size_t mark = request_uri.find('?');
    if (mark != std::string::npos) {
        const std::string query = request_uri.substr(mark + 1, request_uri.find('#', mark) - mark - 1);
        const std::string token = url_decode(value_in(query, '&', "mmref"));
        if (!token.empty()) return token;
    }
    return value_in(cookie_header, ';', "mmref");
}

std::string quote(const std::string& s) {
    std::string out = "\"";
    for (const unsigned char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += static_cast<char>(c);
        } else if (c < ' ') {
            char escaped[7];
            std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
            out += escaped;
        } else {
            out += static_cast<char>(c); // UTF-8 passes through as it is
        }
    }
    return out + '"';
}

// A JSON object of string fields, in the order given.
std::string json(std::initializer_list<std::pair<std::string, std::string>> fields) {
    std::string out = "{";
    for (const auto& [key, value] : fields) {
        out += (out.size() > 1 ? "," : "") + quote(key) + ":" + quote(value);
    }
    return out + "}";
}

// Moment 1: the account was just created by a referred player.
void on_registration(const std::string& account_id, const std::string& token) {
    const std::string id = "reg-" + account_id;
    report(id, json({{"event", "registered"},
                     {"token", token},
                     {"referee_identity", account_id},
                     {"server_event_id", id}}));
}

// Moment 2: the player reached the milestone that rewards the referrer.
void on_milestone(const std::string& account_id, const std::string& token, const std::string& milestone) {
    const std::string id = "qual-" + account_id + "-" + milestone;
    report(id, json({{"event", "qualified"}, {"token", token}, {"server_event_id", id}}));
}

} // namespace

int main(int argc, char** argv) {
    const std::string account_id = argc > 2 ? argv[1] : "7842";
    const std::string request_uri = argc > 2 ? argv[2] : "/register?mmref=mmref-example";
    const std::string cookie = argc > 3 ? argv[3] : "";
    curl_global_init(CURL_GLOBAL_DEFAULT); // once per process, before any thread uses curl

    flush_spool();
    const std::string token = mmref_from(request_uri, cookie);
    if (token.empty()) {
        std::cout << "mmolove: account " << account_id << " was not referred; nothing to report\n";
    } else {
        on_registration(account_id, token); // and store the token with the account
        on_milestone(account_id, token, "level10"); // days later, with the stored token
    }
    curl_global_cleanup();
    return 0;
}
