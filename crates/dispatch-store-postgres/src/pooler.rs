//! The store's pools, and running them behind a transaction pooler (PgBouncer in
//! `pool_mode = transaction`, see
//! [`behind_transaction_pooler`](crate::PostgresStoreBuilder::behind_transaction_pooler)).
//!
//! A transaction pooler hands the client's connection a server session only for the length of
//! a transaction: once the server reports itself idle (`ReadyForQuery` outside a transaction),
//! the next message may reach another session. Three things break on that:
//!
//! - sqlx sends a statement with parameters in two flights, `Parse`/`Describe`/`Sync` and then
//!   `Bind`/`Execute`/`Sync`; outside a transaction each flight may land on another session,
//!   where the statement is missing, or, unnamed, where another client's statement is bound
//!   to our parameters;
//! - named prepared statements (`sqlx_s_N`, one counter per client connection) stay behind on
//!   the session that prepared them, where another client's `sqlx_s_N` then collides;
//! - session settings (`SET`) land on whichever session the pooler chose and stay there.
//!
//! [`Pool`] therefore runs, behind a pooler, each statement given to it as an executor inside a
//! transaction of its own, unnamed, and opens every transaction ([`Pool::begin`],
//! [`Pool::session`]) with one simple query that drops prepared statements left on the server
//! session (`DEALLOCATE ALL`) and applies the store's settings with `SET LOCAL`. Pinned to one
//! server session by the open transaction, both flights of a statement meet the same session.
//! Directly connected, [`Pool`] is the sqlx pool and costs nothing.

use std::ops::{Deref, DerefMut};

use dispatch_core::Result;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use sqlx::Either;
use sqlx::error::BoxDynError;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Execute, Executor, PgConnection, PgPool, Postgres, SqlStr, Transaction};

use crate::db_error;

/// One of the store's pools: the sqlx pool and, behind a transaction pooler, the statement
/// that opens each of its transactions.
#[derive(Debug)]
pub(crate) struct Pool {
    inner: PgPool,
    /// `BEGIN; DEALLOCATE ALL; SET LOCAL …` behind a transaction pooler; `None` when directly
    /// connected.
    pinned_begin: Option<SqlStr>,
}

impl Pool {
    /// A pool of direct connections to PostgreSQL.
    pub(crate) fn direct(inner: PgPool) -> Self {
        Self { inner, pinned_begin: None }
    }

    /// A pool of connections through a transaction pooler, whose transactions start with
    /// `begin` (see [`begin_statement`]).
    pub(crate) fn pooled(inner: PgPool, begin: SqlStr) -> Self {
        Self { inner, pinned_begin: Some(begin) }
    }

    /// The sqlx pool.
    pub(crate) fn inner(&self) -> &PgPool {
        &self.inner
    }

    /// A transaction, committed or rolled back as sqlx's are.
    pub(crate) async fn begin(
        &self,
    ) -> std::result::Result<Transaction<'static, Postgres>, sqlx::Error> {
        match &self.pinned_begin {
            None => self.inner.begin().await,
            Some(begin) => self.inner.begin_with(begin.clone()).await,
        }
    }

    /// A connection for several statements in a row: a plain pooled connection when directly
    /// connected, a transaction behind a pooler. End it with [`Session::end`], which commits
    /// that transaction; dropped without, it rolls back.
    pub(crate) async fn session(&self) -> std::result::Result<Session, sqlx::Error> {
        match &self.pinned_begin {
            None => Ok(Session::Plain(self.inner.acquire().await?)),
            Some(begin) => Ok(Session::Pinned(self.inner.begin_with(begin.clone()).await?)),
        }
    }
}

/// The statement that opens every transaction behind a transaction pooler: `BEGIN`, then
/// `DEALLOCATE ALL` (prepared statements a transaction of another client left on this server
/// session would collide with ours), then `settings` as `SET LOCAL`s (each `SET name = value`,
/// separated by `;`), which end with the transaction.
pub(crate) fn begin_statement(settings: &str) -> String {
    let local = settings.trim().replace("SET ", "SET LOCAL ");
    format!("BEGIN; DEALLOCATE ALL; {local}")
}

/// A connection from [`Pool::session`].
#[derive(Debug)]
pub(crate) enum Session {
    /// Directly connected: statements run in autocommit, as written.
    Plain(PoolConnection<Postgres>),
    /// Behind a transaction pooler: statements run in this transaction.
    Pinned(Transaction<'static, Postgres>),
}

impl Session {
    /// Commit the session's transaction (behind a pooler) when `result` is `Ok`, else roll it
    /// back; `result`, or the commit's failure.
    pub(crate) async fn end<T>(self, result: Result<T>) -> Result<T> {
        match (self, result) {
            (Self::Pinned(tx), Ok(value)) => tx.commit().await.map(|()| value).map_err(db_error),
            // A rollback is queued when the transaction drops.
            (_, result) => result,
        }
    }

    /// Keep the connection out of the pool (it may hold session state a failure left).
    pub(crate) fn detach(self) {
        if let Self::Plain(conn) = self {
            drop(conn.detach());
        }
    }
}

impl Deref for Session {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match self {
            Self::Plain(conn) => conn,
            Self::Pinned(tx) => tx,
        }
    }
}

impl DerefMut for Session {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            Self::Plain(conn) => conn,
            Self::Pinned(tx) => tx,
        }
    }
}

/// A query that prepares no named statement: sqlx's unnamed statement, replaced by the next one.
struct Unnamed<E>(E);

impl<'q, E: Execute<'q, Postgres>> Execute<'q, Postgres> for Unnamed<E> {
    fn sql(self) -> SqlStr {
        self.0.sql()
    }

    fn statement(&self) -> Option<&PgStatement> {
        self.0.statement()
    }

    fn take_arguments(&mut self) -> std::result::Result<Option<PgArguments>, BoxDynError> {
        self.0.take_arguments()
    }

    fn persistent(&self) -> bool {
        false
    }
}

/// Every statement the store runs on `&pool` goes through here: straight to the sqlx pool when
/// directly connected, else in a transaction of its own (see the module docs). Results are
/// collected before the commit, so a caller sees only committed work.
impl<'c> Executor<'c> for &'c Pool {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, std::result::Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let Some(begin) = &self.pinned_begin else { return self.inner.fetch_many(query) };
        let all = async move {
            let mut tx = self.inner.begin_with(begin.clone()).await?;
            let items: Vec<_> = tx.fetch_many(Unnamed(query)).try_collect().await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(futures::stream::iter(items.into_iter().map(Ok)))
        };
        futures::stream::once(all).try_flatten().boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, std::result::Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let Some(begin) = &self.pinned_begin else { return self.inner.fetch_optional(query) };
        Box::pin(async move {
            let mut tx = self.inner.begin_with(begin.clone()).await?;
            let row = tx.fetch_optional(Unnamed(query)).await?;
            tx.commit().await?;
            Ok(row)
        })
    }

    /// Not used by the store: a prepared statement outlives no transaction behind a pooler.
    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, std::result::Result<PgStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        self.inner.prepare_with(sql, parameters)
    }

    /// sqlx's compile-time checks only (its `offline` feature, which this crate turns on so
    /// that an application enabling it does not break this impl).
    fn describe<'e>(
        self,
        sql: SqlStr,
    ) -> BoxFuture<'e, std::result::Result<sqlx::Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.inner.describe(sql)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_local_to_the_transaction() {
        let begin = begin_statement("SET jit = off; SET statement_timeout = 900");
        assert_eq!(
            begin,
            "BEGIN; DEALLOCATE ALL; SET LOCAL jit = off; SET LOCAL statement_timeout = 900"
        );
    }
}
