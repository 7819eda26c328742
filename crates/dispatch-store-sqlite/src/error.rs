//! Driver errors as the core [`Error`]: SQLite result codes read and mapped to kinds (busy and
//! locked databases are `Unavailable`, see [`is_busy`]), the driver error kept as the source.

use dispatch_core::{Error, ErrorKind};

/// The primary SQLite result code of a driver error, if it is a database error: the driver
/// reports extended codes (`SQLITE_BUSY_SNAPSHOT` = 517), whose low byte is the primary one.
fn sqlite_code(err: &sqlx::Error) -> Option<i64> {
    let sqlx::Error::Database(db) = err else { return None };
    db.code().and_then(|c| c.parse::<i64>().ok()).map(primary_code)
}

/// The primary result code of an extended one.
fn primary_code(code: i64) -> i64 {
    code & 0xff
}

/// "Database is busy": another connection (another process, or the application's own
/// connection) held the write lock past the busy timeout, or a snapshot went stale
/// (`SQLITE_BUSY_SNAPSHOT`, `SQLITE_BUSY_RECOVERY`, ...).
const SQLITE_BUSY: i64 = 5;
/// "Table is locked": a conflict with another connection of a shared cache, or within one
/// connection (`SQLITE_LOCKED_SHAREDCACHE`, ...).
const SQLITE_LOCKED: i64 = 6;
const SQLITE_READONLY: i64 = 8;
const SQLITE_CANTOPEN: i64 = 14;
const SQLITE_NOTADB: i64 = 26;

/// Whether a primary result code (see [`sqlite_code`]) says another connection holds a lock.
///
/// Such an error maps to [`ErrorKind::Unavailable`], a transient kind, so the runtime retries
/// the call (a finish while its lease may hold) instead of giving up on it as it does on
/// `Internal`. A lock held by someone else is a state of the moment, not a fault of the call:
/// nothing was written (the transaction never began, or is rolled back whole), and the same call
/// succeeds once the holder lets go. `Unavailable` rather than `Timeout`: the PostgreSQL store
/// maps its lock conflicts (serialization failure, deadlock) to `Unavailable` too, and `Timeout`
/// keeps one meaning in every store, the call's own deadline, after which a write may or may not
/// have been applied; a busy error is never ambiguous that way.
fn is_busy(code: Option<i64>) -> bool {
    matches!(code, Some(SQLITE_BUSY | SQLITE_LOCKED))
}

/// A driver error met while opening `path`, as a typed error with a clear message.
pub(crate) fn open_error(path: &str, err: sqlx::Error) -> Error {
    match sqlite_code(&err) {
        Some(SQLITE_NOTADB) => Error::new(
            ErrorKind::IncompatibleSchema,
            format!("{path:?} is not a Dispatch database: not a SQLite file"),
        ),
        Some(SQLITE_CANTOPEN) => Error::unavailable(format!("can not open database {path:?}")),
        Some(SQLITE_READONLY) => Error::unavailable(format!("database {path:?} is read-only")),
        _ => {
            let inner = db_error_ref(&err);
            Error::new(inner.kind(), format!("can not open database {path:?}: {}", inner.message()))
        }
    }
    .with_source(err)
}

/// A driver error as the core error, keeping it as the source.
pub(crate) fn db_error(err: sqlx::Error) -> Error {
    db_error_ref(&err).with_source(err)
}

fn db_error_ref(err: &sqlx::Error) -> Error {
    match err {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            Error::new(ErrorKind::Conflict, format!("sqlite: {}", db.message()))
        }
        sqlx::Error::Database(_) if sqlite_code(err) == Some(SQLITE_READONLY) => {
            Error::unavailable("sqlite: the database is read-only")
        }
        sqlx::Error::Database(db) if is_busy(sqlite_code(err)) => Error::unavailable(format!(
            "sqlite: the database is locked by another connection: {}",
            db.message()
        )),
        sqlx::Error::Database(_) if sqlite_code(err) == Some(SQLITE_NOTADB) => {
            Error::new(ErrorKind::IncompatibleSchema, "not a Dispatch database: not a SQLite file")
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Error::unavailable(format!("sqlite: {err}")),
        sqlx::Error::Database(db) if sqlite_code(err) == Some(SQLITE_CANTOPEN) => {
            Error::unavailable(format!("sqlite: {}", db.message()))
        }
        _ => Error::internal(format!("sqlite: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_and_locked_are_recognised_in_their_extended_forms() {
        // SQLITE_BUSY, _RECOVERY, _SNAPSHOT, _TIMEOUT; SQLITE_LOCKED, _SHAREDCACHE, _VTAB.
        for code in [5, 261, 517, 773, 6, 262, 518] {
            assert!(is_busy(Some(primary_code(code))), "code {code}");
        }
        // SQLITE_READONLY, SQLITE_IOERR_READ, SQLITE_CONSTRAINT_UNIQUE, no code at all.
        for code in [Some(8), Some(266), Some(2067), None] {
            assert!(!is_busy(code.map(primary_code)), "code {code:?}");
        }
    }
}
