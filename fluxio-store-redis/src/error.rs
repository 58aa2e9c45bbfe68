//! The errors of the Redis store.

use fluxio_core::store::StoreError;

/// What went wrong in a [`RedisStore`](crate::RedisStore).
///
/// [`RedisStore::connect`](crate::RedisStore::connect) returns it directly; the
/// [`CheckpointStore`](fluxio_core::store::CheckpointStore) methods wrap it in
/// [`StoreError::Backend`], naming the operation (`save`, `load`, `acquire`, ...) — except
/// [`Error::Corrupt`], which becomes [`StoreError::Corrupt`]. A write refused because
/// another owner holds the run's lock is not an `Error` but [`StoreError::LockLost`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The first connection to the server failed, or the URL is invalid.
    #[error("cannot connect to redis at `{url}`: {source}{}", connect_hint(source))]
    Connect {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// The Redis client's error.
        #[source]
        source: redis::RedisError,
    },
    /// A Redis command failed (connection lost, timeout, server error).
    #[error("redis command failed during {operation}: {source}")]
    Redis {
        /// What the store was doing (`save`, `load`, `acquire`, ...).
        operation: &'static str,
        /// The Redis client's error.
        #[source]
        source: redis::RedisError,
    },
    /// A stage entry or a finish record was saved for a run that has no start record.
    #[error("run `{run_id}` has no checkpoint (never started, or deleted since)")]
    NotStarted {
        /// The run.
        run_id: String,
    },
    /// The data stored for a run is not a checkpoint this store wrote (missing field,
    /// unknown status, invalid UTF-8).
    #[error("the checkpoint of run `{run_id}` is corrupt: {reason}")]
    Corrupt {
        /// The run.
        run_id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A script answered with something it never returns (a bug, or another program
    /// writing to this store's keys).
    #[error("unexpected reply from redis during {operation}: {reply}")]
    UnexpectedReply {
        /// What the store was doing.
        operation: &'static str,
        /// The reply, as debug text.
        reply: String,
    },
}

/// What to do about a refused connection, when the refusal says.
fn connect_hint(source: &redis::RedisError) -> &'static str {
    match source.code() {
        Some("NOAUTH") => {
            " (the server wants a password: put it in the URL, `redis://:password@host:6379`)"
        }
        _ => "",
    }
}

/// `Result` of this crate's fallible functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn redis(operation: &'static str) -> impl FnOnce(redis::RedisError) -> Error {
        move |source| Error::Redis { operation, source }
    }

    /// This error at the [`CheckpointStore`](fluxio_core::store::CheckpointStore) boundary.
    pub(crate) fn into_store(self, operation: &'static str) -> StoreError {
        match self {
            // Not a store failure: retrying will not help.
            Error::Corrupt { run_id, reason } => StoreError::Corrupt { run_id, reason },
            e => StoreError::backend(operation, e),
        }
    }
}

/// `url` with the password of its user info (`redis://user:password@host`) replaced by
/// `***`, so that errors and `Debug` output never show it.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    let user = match userinfo.find(':') {
        Some(colon) => &userinfo[..colon],
        // `redis://password@host` is read by some clients as a password alone.
        None if !userinfo.is_empty() => "",
        None => return url.to_string(),
    };
    format!(
        "{}{user}:***{}",
        &url[..scheme_end],
        &rest[at..] // from the `@` on
    )
}

/// Lets `?` turn a store error into a `fluxio::Error` (as
/// [`Error::StoreSetup`](fluxio_core::Error::StoreSetup)), for
/// `.with_store(RedisStore::connect(url).await?)` in a function returning `fluxio::Result`.
impl From<Error> for fluxio_core::Error {
    fn from(e: Error) -> Self {
        fluxio_core::Error::StoreSetup {
            source: std::sync::Arc::new(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("redis://:secret@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(
            redact_url("rediss://user:secret@host/0?x=1"),
            "rediss://user:***@host/0?x=1"
        );
        assert_eq!(redact_url("redis://secret@host"), "redis://:***@host");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
