//! Driver errors as the core [`Error`], classified by SQLSTATE, and the store's own errors.

use dispatch_core::{Error, ErrorKind, RunId};
use sqlx::postgres::PgConnectOptions;

/// A driver error as the core error, keeping it as the source.
pub(crate) fn db_error(err: sqlx::Error) -> Error {
    classify(&err).with_source(err)
}

/// A failed connect to the server `options` name, as `Unavailable` (or `InvalidInput` for bad
/// options), with a message naming the server but not the password.
pub(crate) fn connect_error(options: &PgConnectOptions, err: sqlx::Error) -> Error {
    let kind = match &err {
        sqlx::Error::Configuration(_) => ErrorKind::InvalidInput,
        _ => ErrorKind::Unavailable,
    };
    Error::new(kind, format!("can not connect to PostgreSQL at {}: {err}", crate::target(options)))
        .with_source(err)
}

/// A broken promise of the store's own (a row it can not account for), as `Internal`.
pub(crate) fn internal(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("postgres: {e}"))
}

/// `NotFound` for an unknown run.
pub(crate) fn no_run(run: RunId) -> Error {
    Error::not_found(format!("no run {run}"))
}

/// `LeaseLost` for a drive call whose lease no longer holds the run's drive job.
pub(crate) fn lease_lost(run: RunId) -> Error {
    Error::new(ErrorKind::LeaseLost, format!("the drive of run {run} no longer holds its lease"))
}

/// The SQLSTATE of a database error.
fn sqlstate(err: &sqlx::Error) -> Option<String> {
    let sqlx::Error::Database(db) = err else { return None };
    db.code().map(|code| code.into_owned())
}

fn classify(err: &sqlx::Error) -> Error {
    match err {
        sqlx::Error::Database(db) => {
            let code = sqlstate(err).unwrap_or_default();
            let message = match db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                Some(pg) => match pg.detail() {
                    Some(detail) => format!("postgres: {} ({detail})", pg.message()),
                    None => format!("postgres: {}", pg.message()),
                },
                None => format!("postgres: {}", db.message()),
            };
            Error::new(kind_of_sqlstate(&code), message)
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Error::unavailable(format!("postgres: {err}")),
        sqlx::Error::Configuration(_) => Error::invalid_input(format!("postgres: {err}")),
        _ => Error::internal(format!("postgres: {err}")),
    }
}

/// What a SQLSTATE means for the caller.
fn kind_of_sqlstate(code: &str) -> ErrorKind {
    match code {
        // unique_violation: a reused job ID.
        "23505" => ErrorKind::Conflict,
        // The connection went away or can not be made: admin/crash shutdown, starting up,
        // too many connections, connection exceptions (class 08).
        "57P01" | "57P02" | "57P03" | "53300" => ErrorKind::Unavailable,
        c if c.starts_with("08") => ErrorKind::Unavailable,
        // serialization failure, deadlock: transient, the same call may succeed.
        "40001" | "40P01" => ErrorKind::Unavailable,
        // query_canceled: a server-side statement timeout.
        "57014" => ErrorKind::Timeout,
        // Text PostgreSQL can not store, a value too large for an index or a column.
        "22021" | "22P05" | "54000" | "22001" => ErrorKind::InvalidInput,
        _ => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_kinds() {
        assert_eq!(kind_of_sqlstate("23505"), ErrorKind::Conflict);
        assert_eq!(kind_of_sqlstate("57P01"), ErrorKind::Unavailable);
        assert_eq!(kind_of_sqlstate("08006"), ErrorKind::Unavailable);
        assert_eq!(kind_of_sqlstate("40P01"), ErrorKind::Unavailable);
        assert_eq!(kind_of_sqlstate("57014"), ErrorKind::Timeout);
        assert_eq!(kind_of_sqlstate("54000"), ErrorKind::InvalidInput);
        assert_eq!(kind_of_sqlstate("42P01"), ErrorKind::Internal);
    }

    #[test]
    fn connection_errors_are_unavailable() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(db_error(io).kind(), ErrorKind::Unavailable);
        assert_eq!(db_error(sqlx::Error::PoolTimedOut).kind(), ErrorKind::Unavailable);
        assert_eq!(db_error(sqlx::Error::PoolClosed).kind(), ErrorKind::Unavailable);
        assert_eq!(db_error(sqlx::Error::RowNotFound).kind(), ErrorKind::Internal);
    }
}
