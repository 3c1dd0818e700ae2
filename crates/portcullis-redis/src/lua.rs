//! The Lua scripts: each operation is one script, so it is atomic and one
//! round trip. Sent as `EVALSHA`, and as `EVAL` (which also caches it on
//! the server) when the server answers `NOSCRIPT` (a restart, `SCRIPT
//! FLUSH`).
//!
//! Scripts touch keys derived from their arguments (entry keys under the
//! namespace's prefix): fine on one Redis (or a replicated primary), not
//! on Redis Cluster, which this store does not support.

use redis::aio::MultiplexedConnection;
use redis::{ErrorKind, FromRedisValue, RedisResult, ServerErrorKind};

/// Writes entries of one namespace and publishes the change.
/// KEYS: index, seq, epoch, entry keys…
/// ARGV: channel, epoch candidate, message body, then per entry: key, JSON,
/// expires_at (`""` when none). Returns `{seq, epoch}`.
pub(crate) const PUT: &str = r#"
local n = #KEYS - 3
for i = 1, n do
  local k = KEYS[3 + i]
  local a = 3 + (i - 1) * 3
  local member, json, exp = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  redis.call('SET', k, json)
  if exp == '' then
    redis.call('ZADD', KEYS[1], '+inf', member)
  else
    redis.call('EXPIREAT', k, exp)
    redis.call('ZADD', KEYS[1], exp, member)
  end
end
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[3], epoch)
end
local seq = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[1],
  '{"seq":' .. string.format('%d', seq) .. ',"epoch":"' .. epoch .. '",' .. string.sub(ARGV[3], 2))
return {seq, epoch}
"#;

/// Removes one entry and leaves a tombstone (so a later restore does not
/// bring it back); publishes only when it existed.
/// KEYS: index, seq, epoch, entry key, tombstone key. ARGV: channel, epoch
/// candidate, message body, key, tombstone lifetime (seconds). Returns
/// `{existed (0/1), seq, epoch}`; when nothing existed, `seq` is the
/// current one (nothing was written).
pub(crate) const REMOVE: &str = r#"
redis.call('SET', KEYS[5], '1', 'EX', ARGV[5])
local existed = redis.call('DEL', KEYS[4])
redis.call('ZREM', KEYS[1], ARGV[4])
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[3], epoch)
end
if existed == 0 then
  return {0, tonumber(redis.call('GET', KEYS[2]) or '0'), epoch}
end
local seq = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[1],
  '{"seq":' .. string.format('%d', seq) .. ',"epoch":"' .. epoch .. '",' .. string.sub(ARGV[3], 2))
return {1, seq, epoch}
"#;

/// Writes back a replica's last known entries after Redis lost its data:
/// only those neither present (written since) nor removed since (a
/// tombstone), and publishes those it wrote.
/// KEYS: index, seq, epoch, then per entry: entry key, tombstone key.
/// ARGV: channel, epoch candidate, message head (`{"v":…,"ops":[`), then
/// per entry: member, JSON, expires_at (`""` when none), op JSON.
/// Returns `{written, seq, epoch}`.
pub(crate) const RESTORE: &str = r#"
local n = (#KEYS - 3) / 2
local ops = {}
for i = 1, n do
  local k, tomb = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  local a = 3 + (i - 1) * 4
  local member, json, exp, op = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  if redis.call('EXISTS', k) == 0 and redis.call('EXISTS', tomb) == 0 then
    redis.call('SET', k, json)
    if exp == '' then
      redis.call('ZADD', KEYS[1], '+inf', member)
    else
      redis.call('EXPIREAT', k, exp)
      redis.call('ZADD', KEYS[1], exp, member)
    end
    ops[#ops + 1] = op
  end
end
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[3], epoch)
end
if #ops == 0 then
  return {0, tonumber(redis.call('GET', KEYS[2]) or '0'), epoch}
end
local seq = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[1],
  '{"seq":' .. string.format('%d', seq) .. ',"epoch":"' .. epoch .. '",' .. string.sub(ARGV[3], 2)
  .. table.concat(ops, ',') .. ']}')
return {#ops, seq, epoch}
"#;

/// Every live entry of a namespace, with the sequence number it is as of;
/// prunes index members that expired (by the server's clock) or vanished.
/// KEYS: index, seq, epoch. ARGV: entry key prefix, epoch candidate.
/// Returns `{seq, epoch, {json…}}`.
pub(crate) const LIST: &str = r#"
local t = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t[1])
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local vals = {}
for i = 1, #members do
  local v = redis.call('GET', ARGV[1] .. members[i])
  if v then
    vals[#vals + 1] = v
  else
    redis.call('ZREM', KEYS[1], members[i])
  end
end
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[3], epoch)
end
return {tonumber(redis.call('GET', KEYS[2]) or '0'), epoch, vals}
"#;

/// GCRA, as `portcullis_contain::rate::Limiter::check`, in microseconds,
/// taking up to `n` cells at once (a replica's lease).
/// KEYS: the rate key. ARGV: interval, tolerance (burst × interval), now
/// (`""`: the server's clock), n. Returns `{cells taken, wait}`: `wait` is
/// how long until one cell would be free when none was taken. The arrival
/// time is stored, expiring when the bucket is full again.
pub(crate) const GCRA: &str = r#"
local now
if ARGV[3] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[3])
end
local interval = math.max(1, tonumber(ARGV[1]))
local tolerance = tonumber(ARGV[2])
local n = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local k = math.floor((now + tolerance - tat) / interval)
if k > n then
  k = n
end
if k < 1 then
  return {0, tat + interval - now - tolerance}
end
local nxt = tat + k * interval
redis.call('SET', KEYS[1], string.format('%d', nxt), 'PX', math.max(1, math.ceil((nxt - now) / 1000)))
return {k, 0}
"#;

/// One script, known by its SHA-1.
pub(crate) struct Lua {
    code: &'static str,
    sha: String,
}

impl Lua {
    pub(crate) fn new(code: &'static str) -> Lua {
        Lua {
            code,
            sha: redis::Script::new(code).get_hash().to_owned(),
        }
    }

    /// Runs it: `EVALSHA`, then `EVAL` when the server does not know it.
    pub(crate) async fn run<T: FromRedisValue>(
        &self,
        con: &mut MultiplexedConnection,
        keys: &[String],
        args: &[String],
    ) -> RedisResult<T> {
        let cmd = |verb: &str, body: &str| {
            let mut c = redis::cmd(verb);
            c.arg(body).arg(keys.len()).arg(keys).arg(args);
            c
        };
        match cmd("EVALSHA", &self.sha).query_async(con).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                cmd("EVAL", self.code).query_async(con).await
            }
            r => r,
        }
    }
}

/// The scripts.
pub(crate) struct Scripts {
    pub put: Lua,
    pub remove: Lua,
    pub restore: Lua,
    pub list: Lua,
    pub gcra: Lua,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            put: Lua::new(PUT),
            remove: Lua::new(REMOVE),
            restore: Lua::new(RESTORE),
            list: Lua::new(LIST),
            gcra: Lua::new(GCRA),
        }
    }
}
