-- X answered usage-capped: the App's requests are refused until Redis's now + ARGV[1] ms
-- (never shortened by a later, shorter call). KEYS[1]: the App's usage-cap key.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cooldown = tonumber(ARGV[1])
local until_ms = now + cooldown
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ms > current then
  redis.call('SET', KEYS[1], string.format('%d', until_ms), 'PX', string.format('%d', cooldown))
end
return {until_ms}
