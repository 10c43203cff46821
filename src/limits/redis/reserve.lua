-- Reserves one request in every bucket of KEYS[1..n], or in none (CONTRACT section 5), with
-- Redis's own clock. Loaded once and called by its SHA (EVALSHA).
--
-- KEYS: the n buckets, the App's usage-cap key, then (when ARGV[2] is 1) the client's share.
-- ARGV: n, has_share, the share's emission interval (ms), its burst, then per bucket: its
--   limit, its window (ms), and learned (1: a window learnt from X's headers, drawn from only
--   once it exists).
-- A bucket is a hash: l limit, r remaining, e window end (Unix ms), w window start (what a
--   reservation's ticket names), f requests in flight, n window length (ms). It expires one
--   window length after its window ends. The share is GCRA: its key holds the theoretical
--   arrival time (Unix ms).
-- Answers {0, now, then per bucket: ticket (0: not drawn from), remaining, in flight, window
--   end, limit, as this reservation left them} | {1, now, capped until}
--   | {2, now, reset, limit, window} of the bucket that allows a request last | {3, now, wait}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local cap = tonumber(redis.call('GET', KEYS[n + 1]) or '0')
if now < cap then
  return {1, now, cap}
end
local state = {}
local worst = nil
for i = 1, n do
  local at = 4 + (i - 1) * 3
  local h = redis.call('HMGET', KEYS[i], 'l', 'r', 'e', 'w', 'f', 'n')
  if h[1] or ARGV[at + 3] ~= '1' then
    local l = tonumber(h[1]) or tonumber(ARGV[at + 1])
    local win = tonumber(h[6]) or tonumber(ARGV[at + 2])
    local r = tonumber(h[2]) or l
    local e = tonumber(h[3]) or 0
    local w = tonumber(h[4]) or now
    local f = tonumber(h[5]) or 0
    local rolled = now >= e
    if rolled then
      e = now + win
      r = l
      w = now
    end
    if r <= 0 and (not worst or e > worst[1]) then
      worst = {e, l, win}
    end
    state[i] = {l, r, e, w, f, win, rolled}
  end
end
if worst then
  return {2, now, worst[1], worst[2], worst[3]}
end
if ARGV[2] == '1' then
  -- Taken last: a request the buckets refuse uses up none of the client's share.
  local interval = tonumber(ARGV[3])
  local burst = tonumber(ARGV[4])
  local tat = math.max(tonumber(redis.call('GET', KEYS[n + 2]) or '0'), now) + interval
  if tat - now > burst * interval then
    return {3, now, tat - now - burst * interval}
  end
  redis.call('SET', KEYS[n + 2], string.format('%d', tat), 'PX', string.format('%d', tat - now))
end
local answer = {0, now}
for i = 1, n do
  local s = state[i]
  if s then
    redis.call('HSET', KEYS[i], 'l', s[1], 'r', s[2] - 1, 'e', string.format('%d', s[3]),
      'w', string.format('%d', s[4]), 'f', s[5] + 1, 'n', s[6])
    if s[7] then
      -- A new window (or a new bucket): it expires one window length after it ends.
      redis.call('PEXPIREAT', KEYS[i], string.format('%d', s[3] + s[6]))
    end
    answer[#answer + 1] = s[4]
    answer[#answer + 1] = s[2] - 1
    answer[#answer + 1] = s[5] + 1
    answer[#answer + 1] = s[3]
    answer[#answer + 1] = s[1]
  else
    for _ = 1, 5 do
      answer[#answer + 1] = 0
    end
  end
end
return answer
