// Report MMOLove referrals through mmolove-relay: C#, no packages (HttpClient).
//
// Build and run with Mono:  mcs -r:System.Net.Http Referral.cs && mono Referral.exe ACCOUNT_ID REQUEST_URI [COOKIE_HEADER]
// (.NET: put it in a console project; it needs nothing beyond the base library.)
// Set MMOLOVE_RELAY_URL if the relay is not on http://127.0.0.1:8787.
using System;
using System.IO;
using System.Linq;
using System.Net.Http;
using System.Runtime.InteropServices;
using System.Text;
using System.Threading.Tasks;

static class Referral
{
    static readonly string Relay =
        Environment.GetEnvironmentVariable("MMOLOVE_RELAY_URL") ?? "http://127.0.0.1:8787";
    static readonly string Spool =
        Environment.GetEnvironmentVariable("MMOLOVE_SPOOL") ?? "mmolove-spool.jsonl";
    static readonly HttpClient Http = new HttpClient { Timeout = TimeSpan.FromSeconds(3) };

    // Hand one event (its JSON) to the relay. Never throws: registration goes on whatever happens.
    static async Task Report(string id, string json)
    {
        int status;
        string answer;
        try
        {
            var content = new StringContent(json, Encoding.UTF8, "application/json");
            var response = await Http.PostAsync(Relay + "/v1/events", content);
            status = (int)response.StatusCode;
            answer = await response.Content.ReadAsStringAsync();
        }
        catch (Exception e) when (e is HttpRequestException || e is TaskCanceledException)
        {
            Keep(id, json, e.Message); // refused or timed out: the relay is not running
            return;
        }
        if (status >= 200 && status < 300)
            // 202: stored, the relay delivers it. 200: a repeat of a stored event. Done either way.
            Console.WriteLine($"mmolove: {id} done {status}");
        else if (status >= 400 && status < 500)
            // The event is wrong; sending it again would get the same answer. Log, drop.
            Console.Error.WriteLine($"mmolove: {id} rejected {status} {answer}");
        else
            Keep(id, json, $"HTTP {status}"); // 503: the relay cannot store right now
    }

    // Spool the event to resend later; safe, as a resend is a duplicate, never a second event.
    static void Keep(string id, string json, string reason)
    {
        File.AppendAllText(Spool, id + " " + json + "\n");
        Console.Error.WriteLine($"mmolove: {id} spooled ({reason})");
    }

    // Resend spooled events: call it at start-up and then every minute or so.
    static async Task FlushSpool()
    {
        var sending = Spool + ".sending";
        if (!File.Exists(sending))
        {
            if (!File.Exists(Spool)) return;
            File.Move(Spool, sending); // events that fail again go to a fresh spool
        }
        foreach (var line in File.ReadAllLines(sending).Where(l => l.Length > 0))
        {
            var parts = line.Split(new[] { ' ' }, 2); // "<server_event_id> <json>"
            await Report(parts[0], parts[1]);
        }
        File.Delete(sending);
    }

    // The referral token: ?mmref= on the registration request, else the cookie your landing
    // page set. (ASP.NET Core: Request.Query["mmref"], else Request.Cookies["mmref"].)
    static string MmrefFrom(Uri request, string cookieHeader)
    {
        foreach (var pair in request.Query.TrimStart('?').Split('&'))
            if (pair.StartsWith("mmref=") && pair.Length > 6)
                return Uri.UnescapeDataString(pair.Substring(6).Replace('+', ' '));
        foreach (var pair in cookieHeader.Split(';').Select(c => c.Trim()))
            if (pair.StartsWith("mmref=") && pair.Length > 6)
                return pair.Substring(6);
        return null;
    }

    // Moment 1: the account was just created by a referred player.
    static Task OnRegistration(string accountId, string token) =>
        Report("reg-" + accountId, Json(
            "event", "registered", "token", token,
            "referee_identity", accountId, "server_event_id", "reg-" + accountId));

    // Moment 2: the player reached the milestone that rewards the referrer.
    static Task OnMilestone(string accountId, string token, string milestone)
    {
        var id = $"qual-{accountId}-{milestone}";
        return Report(id, Json("event", "qualified", "token", token, "server_event_id", id));
    }

    // A JSON object of string fields (System.Text.Json does the same on .NET; Mono lacks it).
    static string Json(params string[] keysAndValues)
    {
        var fields = new string[keysAndValues.Length / 2];
        for (var i = 0; i < fields.Length; i++)
            fields[i] = Quote(keysAndValues[2 * i]) + ":" + Quote(keysAndValues[2 * i + 1]);
        return "{" + string.Join(",", fields) + "}";
    }

    static string Quote(string s)
    {
        var sb = new StringBuilder("\"");
        foreach (var c in s)
        {
            if (c == '"' || c == '\\') sb.Append('\\').Append(c);
            else if (c < ' ') sb.AppendFormat("\\u{0:x4}", (int)c);
            else sb.Append(c);
        }
        return sb.Append('"').ToString();
    }

    // Mono's compiler has no async Main, so Main waits for the async demo.
    static void Main(string[] args)
    {
        Demo(
            args.Length > 1 ? args[0] : "7842",
            args.Length > 1 ? args[1] : "/register?mmref=mmref-example",
            args.Length > 2 ? args[2] : "").GetAwaiter().GetResult();
        // Mono 6.8's shutdown can hang after HttpClient use: it suspends every thread first
        // (as in mono/mono#17317); 5 runs in 3,362 hung on a busy machine. Under Mono the demo
        // leaves without it (no hang in 2,000): each line is already written (Console flushes
        // it) and the spool file is closed. On .NET, Main just returns.
        if (Type.GetType("Mono.Runtime") != null)
            ExitWithoutShutdown(0);
    }

    [DllImport("libc", EntryPoint = "_exit")]
    static extern void ExitWithoutShutdown(int status);

    static async Task Demo(string accountId, string requestUri, string cookie)
    {
        await FlushSpool();
        var token = MmrefFrom(new Uri(new Uri("http://game.invalid"), requestUri), cookie);
        if (token == null)
        {
            Console.WriteLine($"mmolove: account {accountId} was not referred; nothing to report");
            return;
        }
        await OnRegistration(accountId, token); // and store the token with the account
        await OnMilestone(accountId, token, "level10"); // days later, with the stored token
    }
}
