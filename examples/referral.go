// Report MMOLove referrals through mmolove-relay: Go, standard library only (net/http).
//
// Usage: go run referral.go ACCOUNT_ID REQUEST_URI [COOKIE_HEADER]
// Set MMOLOVE_RELAY_URL if the relay is not on http://127.0.0.1:8787.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http"
	"os"
	"strings"
	"time"
)

var (
	relay  = getenv("MMOLOVE_RELAY_URL", "http://127.0.0.1:8787")
	spool  = getenv("MMOLOVE_SPOOL", "mmolove-spool.jsonl")
	client = &http.Client{Timeout: 3 * time.Second}
)

// Event is one referral event; every field the relay needs here is a string.
type Event map[string]string

// report hands one event to the relay. It never fails: registration goes on whatever happens.
func report(event Event) {
	id := event["server_event_id"]
	body, _ := json.Marshal(event)
	resp, err := client.Post(relay+"/v1/events", "application/json", bytes.NewReader(body))
	if err != nil { // refused or timed out: the relay is not running
		keep(event, err.Error())
		return
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		// 202: stored, the relay delivers it. 200: a repeat of a stored event. Done either way.
		fmt.Printf("mmolove: %s done %d\n", id, resp.StatusCode)
	case resp.StatusCode >= 400 && resp.StatusCode < 500:
		// The event is wrong; sending it again would get the same answer. Log, drop.
		log.Printf("mmolove: %s rejected %d %s", id, resp.StatusCode, answer)
	default: // 503: the relay cannot store right now (shutting down, disk full)
		keep(event, resp.Status)
	}
}

// keep spools the event to resend later; safe, as a resend is a duplicate, never a second event.
func keep(event Event, reason string) {
	line, _ := json.Marshal(event)
	f, err := os.OpenFile(spool, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err == nil {
		_, err = f.Write(append(line, '\n'))
		f.Close()
	}
	if err != nil {
		log.Printf("mmolove: %s lost: cannot spool: %v", event["server_event_id"], err)
		return
	}
	log.Printf("mmolove: %s spooled (%s)", event["server_event_id"], reason)
}

// flushSpool resends spooled events: call it at start-up and then every minute or so.
func flushSpool() {
	sending := spool + ".sending"
	if _, err := os.Stat(sending); errors.Is(err, fs.ErrNotExist) {
		// Events that fail again go to a fresh spool.
		if os.Rename(spool, sending) != nil {
			return // nothing spooled
		}
	}
	data, _ := os.ReadFile(sending)
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var event Event
		if json.Unmarshal([]byte(line), &event) == nil {
			report(event)
		}
	}
	os.Remove(sending)
}

// mmrefFrom reads the referral token off the registration request: ?mmref=, else the
// cookie your landing page set.
func mmrefFrom(r *http.Request) string {
	if token := r.URL.Query().Get("mmref"); token != "" {
		return token
	}
	if cookie, err := r.Cookie("mmref"); err == nil {
		return cookie.Value
	}
	return ""
}

// onRegistration is moment 1: the account was just created by a referred player.
func onRegistration(accountID, token string) {
	report(Event{
		"event":            "registered",
		"token":            token,
		"referee_identity": accountID,
		"server_event_id":  "reg-" + accountID,
	})
}

// onMilestone is moment 2: the player reached the milestone that rewards the referrer.
func onMilestone(accountID, token, milestone string) {
	report(Event{
		"event":           "qualified",
		"token":           token,
		"server_event_id": "qual-" + accountID + "-" + milestone,
	})
}

func main() {
	accountID, requestURI, cookie := "7842", "/register?mmref=mmref-example", ""
	if len(os.Args) > 2 {
		accountID, requestURI = os.Args[1], os.Args[2]
	}
	if len(os.Args) > 3 {
		cookie = os.Args[3]
	}
	// In a net/http handler this is the *http.Request you are given.
	r, err := http.NewRequest("GET", requestURI, nil)
	if err != nil {
		log.Fatal(err)
	}
	r.Header.Set("Cookie", cookie)

	flushSpool()
	token := mmrefFrom(r)
	if token == "" {
		fmt.Printf("mmolove: account %s was not referred; nothing to report\n", accountID)
		return
	}
	onRegistration(accountID, token)         // and store the token with the account
	onMilestone(accountID, token, "level10") // days later, with the stored token
}

func getenv(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}
