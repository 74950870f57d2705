-- Report MMOLove referrals through mmolove-relay: Lua 5.1 to 5.4 or LuaJIT, with LuaSocket.
--
-- Usage: lua5.1 referral.lua ACCOUNT_ID REQUEST_URI [COOKIE_HEADER]
-- (Debian and Ubuntu: apt install lua5.1 lua-socket; elsewhere: luarocks install luasocket.)
-- Set MMOLOVE_RELAY_URL if the relay is not on http://127.0.0.1:8787.
--
-- In a scripting engine such as Eluna, copy the functions above the demo at the end and call
-- them from your hooks; moment 2 is then a level-up hook, e.g. for level 10:
--   RegisterPlayerEvent(13, function(event, player, oldLevel) -- PLAYER_EVENT_ON_LEVEL_CHANGE
--     if player:GetLevel() == 10 then
--       on_milestone(player:GetAccountId(), token_stored_with_the_account, "level10")
--     end
--   end)
-- LuaSocket blocks the thread that calls it: a relay that is down refuses at once, one that
-- hangs holds the world thread for the timeout below, on each connect or read.
local http = require("socket.http")
local ltn12 = require("ltn12")

local RELAY = os.getenv("MMOLOVE_RELAY_URL") or "http://127.0.0.1:8787"
local SPOOL = os.getenv("MMOLOVE_SPOOL") or "mmolove-spool.jsonl"
http.TIMEOUT = 3 -- seconds, per connect or read; one setting for every user of socket.http

-- Spool the event to resend later; safe, as a resend is a duplicate, never a second event.
local function keep(id, json, reason)
  local spooled, err = pcall(function()
    local file = assert(io.open(SPOOL, "a"))
    assert(file:write(json, "\n"))
    assert(file:close())
  end)
  if not spooled then
    io.stderr:write("mmolove: ", id, " lost: cannot spool: ", tostring(err), "\n")
    return
  end
  io.stderr:write("mmolove: ", id, " spooled (", reason, ")\n")
end

-- Hand one event (its JSON) to the relay. Never raises: registration goes on whatever happens.
local function report(id, json)
  local answer = {}
  local ok, status = http.request({
    url = RELAY .. "/v1/events",
    method = "POST",
    headers = { ["content-type"] = "application/json", ["content-length"] = tostring(#json) },
    source = ltn12.source.string(json),
    sink = ltn12.sink.table(answer),
  })
  if not ok then -- refused or timed out: the relay is not running
    keep(id, json, tostring(status))
  elseif status >= 200 and status < 300 then
    -- 202: stored, the relay delivers it. 200: a repeat of a stored event. Done either way.
    print("mmolove: " .. id .. " done " .. status)
  elseif status >= 400 and status < 500 then
    -- The event is wrong; sending it again would get the same answer. Log, drop.
    io.stderr:write("mmolove: ", id, " rejected ", status, " ", table.concat(answer), "\n")
  else
    keep(id, json, "HTTP " .. status) -- 503: the relay cannot store right now
  end
end

-- The server_event_id of a spooled body, as json() wrote it (escapes kept), or nil. The
-- spool holds each body exactly as first sent, so only the id is read back. Inside a value
-- every quote is escaped, so the unescaped "server_event_id":" can only be the key.
local function id_of(json)
  local key = '"server_event_id":"'
  local start = json:find(key, 1, true)
  if not start then
    return nil
  end
  start = start + #key
  local at = start
  while at <= #json do
    local c = json:sub(at, at)
    if c == '"' then
      return json:sub(start, at - 1)
    end
    at = at + (c == "\\" and 2 or 1) -- skip the escaped character
  end
end

-- Resend spooled events: call it at start-up and then every minute or so.
local function flush_spool()
  local sending = SPOOL .. ".sending"
  local file = io.open(sending)
  if not file then
    if not os.rename(SPOOL, sending) then -- events that fail again go to a fresh spool
      return -- nothing spooled
    end
    file = assert(io.open(sending))
  end
  local lines = {}
  for line in file:lines() do
    lines[#lines + 1] = line
  end
  file:close()
  for _, line in ipairs(lines) do
    local id = id_of(line)
    if id then
      report(id, line)
    elseif line ~= "" then
      io.stderr:write("mmolove: dropped a spool line that is not an event: ", line, "\n")
    end
  end
  os.remove(sending)
end

-- The referral token: ?mmref= on the registration request, else the cookie your landing
-- page set.
local function mmref_from(request_uri, cookie_header)
  local query = request_uri:match("%?([^#]*)") or ""
  for pair in query:gmatch("[^&]+") do
    local value = pair:match("^mmref=(.+)")
    if value then
      return (value:gsub("%+", " "):gsub("%%(%x%x)", function(hex)
        return string.char(tonumber(hex, 16))
      end))
    end
  end
  for pair in cookie_header:gmatch("[^;]+") do
    local value = pair:match("^%s*mmref=(.+)")
    if value then
      return value
    end
  end
end

local function quote(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    if c == '"' or c == "\\" then
      return "\\" .. c
    end
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

-- A JSON object of string fields, { "key", "value", ... } in that order.
local function json(fields)
  local parts = {}
  for i = 1, #fields, 2 do
    parts[#parts + 1] = quote(fields[i]) .. ":" .. quote(fields[i + 1])
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

-- Moment 1: the account was just created by a referred player.
local function on_registration(account_id, token)
  account_id = tostring(account_id) -- Eluna's player:GetAccountId() is a number
  local id = "reg-" .. account_id
  report(id, json({ "event", "registered", "token", token,
                    "referee_identity", account_id, "server_event_id", id }))
end

-- Moment 2: the player reached the milestone that rewards the referrer.
local function on_milestone(account_id, token, milestone)
  account_id = tostring(account_id)
  local id = "qual-" .. account_id .. "-" .. milestone
  report(id, json({ "event", "qualified", "token", token, "server_event_id", id }))
end

-- The demo, from the command line only (a scripting engine passes no arg table).
if arg then
  local account_id = arg[1] or "7842"
  local request_uri = arg[2] or "/register?mmref=mmref-example"
  local cookie = arg[3] or ""
  io.stdout:setvbuf("line") -- keep stdout and stderr lines in order when piped
  flush_spool()
  local token = mmref_from(request_uri, cookie)
  if not token then
    print("mmolove: account " .. account_id .. " was not referred; nothing to report")
  else
    on_registration(account_id, token) -- and store the token with the account
    on_milestone(account_id, token, "level10") -- days later, with the stored token
  end
end
