-- Settles requests' reservations (CONTRACT section 5 rule 2), with Redis's own clock: applies
-- what X reported about each bucket, then completes each reservation (its request went
-- upstream) or gives it back (it did not). One call may settle several requests of one App
-- (their keys share its hash tag); a key may appear more than once.
--
-- KEYS: the buckets, as reserve.lua had them, request after request.
-- ARGV: n, then per bucket: its ticket (0: not drawn from), sent (1: complete; 0: give back),
--   learn (1: X reported this window), the limit X reported (0: none), its remaining, its
--   reset (Unix ms), the limit to create the bucket with, its window (ms).
-- A report whose reset has passed changes nothing; one with the bucket's own reset never
-- raises what remains; X's remaining counts the requests in flight other than this one.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
for i = 1, n do
  local at = 1 + (i - 1) * 8
  local ticket = tonumber(ARGV[at + 1])
  local sent = ARGV[at + 2] == '1'
  local reset = tonumber(ARGV[at + 6])
  local learn = ARGV[at + 3] == '1' and reset > now
  if ticket ~= 0 or learn then
    local h = redis.call('HMGET', KEYS[i], 'l', 'r', 'e', 'w', 'f', 'n')
    local exists = h[1] and true or false
    if exists or learn then
      local l = tonumber(h[1]) or tonumber(ARGV[at + 7])
      local r = tonumber(h[2]) or l
      local e = tonumber(h[3]) or 0
      local w = tonumber(h[4]) or now
      local f = tonumber(h[5]) or 0
      local win = tonumber(h[6]) or tonumber(ARGV[at + 8])
      local mine = ticket ~= 0 and exists
      local ends = e
      if learn then
        local reported = tonumber(ARGV[at + 4])
        if reported > 0 then
          l = reported
        end
        local others = f
        if mine then
          others = others - 1
        end
        if others < 0 then
          others = 0
        end
        local allowed = tonumber(ARGV[at + 5]) - others
        if allowed < 0 then
          allowed = 0
        end
        if allowed > l then
          allowed = l
        end
        if reset == e then
          if allowed < r then
            r = allowed
          end
        else
          e = reset
          r = allowed
        end
      end
      if mine then
        if f > 0 then
          f = f - 1
        end
        if not sent and w == ticket and r < l then
          r = r + 1
        end
      end
      redis.call('HSET', KEYS[i], 'l', l, 'r', r, 'e', string.format('%d', e),
        'w', string.format('%d', w), 'f', f, 'n', win)
      if e ~= ends or not exists then
        redis.call('PEXPIREAT', KEYS[i], string.format('%d', e + win))
      end
    end
  end
end
return {0}
