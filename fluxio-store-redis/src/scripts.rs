//! The Lua scripts of the store.
//!
//! Each write to a run is one script, so the owner check and the write are one atomic step
//! (the fencing of [`CheckpointStore`](fluxio_core::store::CheckpointStore)). Keys are always
//! passed in `KEYS` (never built inside a script), and all keys of one call share the run's
//! hash tag, so the scripts run unchanged on a Redis Cluster.
//!
//! `save` scripts take `KEYS = [lock, meta, entries, tokens]`, `ARGV[1] = owner`, and return
//! [`OK`] (written), [`LOCK_LOST`] (the lock is not held by `owner`: nothing was written) or
//! [`NOT_STARTED`] (no start record: nothing was written). `GET` does not see an expired
//! lock, so a lock whose lease ran out counts as lost.

use std::sync::LazyLock;

use redis::Script;

/// A `save` script wrote its record.
pub(crate) const OK: i64 = 1;
/// A `save` script found the lock missing or held by another owner, and wrote nothing.
pub(crate) const LOCK_LOST: i64 = 0;
/// A `save` script found no start record for the run, and wrote nothing.
pub(crate) const NOT_STARTED: i64 = -1;

/// A `Save::Start` found the run rolling back, and wrote nothing.
pub(crate) const ROLLBACK_PENDING: i64 = -2;

/// `Save::Start` and `Save::Rewrite`: `ARGV = [owner, version, header, start, entry...]`,
/// `start` being `'1'` for a start and `'0'` for a rewrite. Replaces whatever the run held
/// (its meta and entries, and with them any TTL of a finished run) with the new meta and
/// the entries given (a rewrite's; none for a start), a few hundred per `RPUSH` to stay
/// within Lua's argument limits — except that a start leaves a run rolling back as it is
/// ([`ROLLBACK_PENDING`]). A meta that is not a hash is replaced.
pub(crate) const SAVE_START: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[4] == '1' and redis.call('TYPE', KEYS[2]).ok == 'hash'
    and redis.call('HGET', KEYS[2], 'status') == 'rolling_back' then
  return -2
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
local now = redis.call('TIME')
redis.call('HSET', KEYS[2], 'version', ARGV[2], 'status', 'running', 'header', ARGV[3],
  'updated_at_ms', now[1] .. string.format('%03d', math.floor(now[2] / 1000)))
for i = 5, #ARGV, 500 do
  redis.call('RPUSH', KEYS[3], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
return 1
";

/// `Save::Entry`: `ARGV = [owner, entry, token]`. Appends the entry, unless an entry with the
/// same `token` (unique per save call) was appended before: then this is a resend of a save
/// whose reply was lost, and it already ran — also when other saves ran in between (stages
/// of a parallel block save at once, and a broken connection resends them all). The tokens
/// are kept in a set beside the entries, as long as they are. A finished run that is being resumed is live
/// again, so a TTL set when it finished is removed. (`PTTL` answers both questions at once:
/// -2 when the meta is missing, -1 when it has no TTL.)
pub(crate) const SAVE_ENTRY: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local ttl = redis.call('PTTL', KEYS[2])
if ttl == -2 then return -1 end
if redis.call('SADD', KEYS[4], ARGV[3]) == 0 then return 1 end
redis.call('RPUSH', KEYS[3], ARGV[2])
if ttl >= 0 then
  redis.call('PERSIST', KEYS[2])
  redis.call('PERSIST', KEYS[3])
  redis.call('PERSIST', KEYS[4])
end
return 1
";

/// `Save::Finish`: `ARGV = [owner, status, has_error ('1' or '0'), error, ttl_ms]`. Sets the
/// status and the error (removing an older error when there is none), then expires the
/// run's meta and entries after `ttl_ms` milliseconds, or keeps them forever when `ttl_ms`
/// is `0` or the run is not over (`running`, `rolling_back`).
pub(crate) const SAVE_FINISH: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
local now = redis.call('TIME')
local at = now[1] .. string.format('%03d', math.floor(now[2] / 1000))
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[2], 'status', ARGV[2], 'error', ARGV[4], 'updated_at_ms', at)
else
  redis.call('HSET', KEYS[2], 'status', ARGV[2], 'updated_at_ms', at)
  redis.call('HDEL', KEYS[2], 'error')
end
if ARGV[5] ~= '0' and ARGV[2] ~= 'running' and ARGV[2] ~= 'rolling_back' then
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
else
  redis.call('PERSIST', KEYS[2])
  redis.call('PERSIST', KEYS[3])
  redis.call('PERSIST', KEYS[4])
end
return 1
";

/// `delete`: `KEYS = [lock, meta, entries, tokens]`. Deletes the run's keys unless its lock
/// is held (the lock key exists only while its lease lasts); returns 1, or 0 when locked.
pub(crate) const DELETE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
return 1
";

/// `acquire`: `KEYS = [lock]`, `ARGV = [owner, lease_ms]`. Takes a free (or expired) lock,
/// or refreshes the lease of a lock `owner` already holds; returns 1, or 0 when another
/// owner holds it.
pub(crate) const ACQUIRE: &str = r"
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// `renew`: `KEYS = [lock]`, `ARGV = [owner, lease_ms]`. Extends the lease if `owner` holds
/// the lock; returns 1, or 0 when it does not.
pub(crate) const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// `release`: `KEYS = [lock]`, `ARGV = [owner]`. Deletes the lock if `owner` holds it;
/// returns 1 if it did, else 0.
pub(crate) const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The scripts, with their SHA1 digests computed once.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) delete: Script,
    pub(crate) save_start: Script,
    pub(crate) save_entry: Script,
    pub(crate) save_finish: Script,
    pub(crate) acquire: Script,
    pub(crate) renew: Script,
    pub(crate) release: Script,
}

impl Scripts {
    /// Every script with its source, to preload them with `SCRIPT LOAD`.
    pub(crate) fn all(&self) -> [(&'static str, &Script); 7] {
        [
            (DELETE, &self.delete),
            (SAVE_START, &self.save_start),
            (SAVE_ENTRY, &self.save_entry),
            (SAVE_FINISH, &self.save_finish),
            (ACQUIRE, &self.acquire),
            (RENEW, &self.renew),
            (RELEASE, &self.release),
        ]
    }
}

/// The store's scripts.
pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    delete: Script::new(DELETE),
    save_start: Script::new(SAVE_START),
    save_entry: Script::new(SAVE_ENTRY),
    save_finish: Script::new(SAVE_FINISH),
    acquire: Script::new(ACQUIRE),
    renew: Script::new(RENEW),
    release: Script::new(RELEASE),
});
