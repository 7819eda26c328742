//! Driver errors to `dispatch_core::Error`, and the refusals the scripts raise.
//!
//! A script refuses a call with an error reply whose code is `DISPATCH_<KIND>` (written before
//! any write, see `lua/prelude.lua`); every other server error is the store's own bug
//! (`Internal`), and a lost or refused connection is `Unavailable`.

use dispatch_core::{Error, ErrorKind};

/// A driver error as the core error, keeping it as the source.
pub(crate) fn redis_error(err: redis::RedisError) -> Error {
    if let Some(kind) = err.code().and_then(refusal) {
        let message = err.detail().unwrap_or("refused").to_owned();
        return Error::new(kind, message);
    }
    let kind = if err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || matches!(err.kind(), redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading))
    {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Internal
    };
    Error::new(kind, format!("redis: {err}")).with_source(err)
}

/// The kind a script's refusal code names.
fn refusal(code: &str) -> Option<ErrorKind> {
    Some(match code {
        "DISPATCH_CONFLICT" => ErrorKind::Conflict,
        "DISPATCH_NOT_FOUND" => ErrorKind::NotFound,
        "DISPATCH_LEASE_LOST" => ErrorKind::LeaseLost,
        "DISPATCH_NOT_LEADER" => ErrorKind::NotLeader,
        "DISPATCH_INVALID" => ErrorKind::InvalidInput,
        _ => return None,
    })
}

/// A failure to get a pooled connection, as `Unavailable` (or `Timeout`).
pub(crate) fn pool_error(err: deadpool_redis::PoolError) -> Error {
    let kind = match err {
        deadpool_redis::PoolError::Timeout(_) => ErrorKind::Timeout,
        _ => ErrorKind::Unavailable,
    };
    Error::new(kind, format!("redis: no connection: {err}")).with_source(err)
}

/// A reply the store can not account for, as `Internal`.
pub(crate) fn internal(what: impl std::fmt::Display) -> Error {
    Error::internal(format!("redis: {what}"))
}
