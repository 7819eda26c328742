//! The fence of a drive's calls: every write of a drive happens only while the drive's lease
//! holds the run's drive job.
//!
//! Fenced statements (a drive's calls) take `$2` the drive job, `$3` the lease token and `$4` the
//! run, and start with [`FENCE`]: the job row is locked `FOR UPDATE` only while that lease holds
//! it, so nothing can finish, rescue or re-claim the job until the statement commits, and every
//! write joins `ok`, which is empty when the lease does not hold the run's drive job. They answer
//! `found` (the run exists) and `held` (the fence held), [`FENCED`].

use dispatch_core::{LeaseRef, Result, RunId};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{Postgres, SqlStr};

use crate::error::{lease_lost, no_run};
use crate::row::get;
use crate::{PostgresStore, db_error};

/// The fence of a drive's call; see the module docs.
pub(crate) const FENCE: &str = "lock AS (SELECT j.id FROM {s}.jobs j WHERE j.id = $2 AND j.state = 'running' \
       AND j.lease_token = $3 FOR UPDATE), \
     r AS (SELECT x.* FROM {s}.runs x WHERE x.id = $4), \
     ok AS (SELECT r.* FROM r JOIN lock l ON l.id = r.drive_job)";

/// What every fenced statement answers.
pub(crate) const FENCED: &str =
    "EXISTS (SELECT 1 FROM r) AS found, EXISTS (SELECT 1 FROM ok) AS held";

/// A statement with its parameters bound.
pub(crate) type Bound<'q> = Query<'q, Postgres, PgArguments>;

impl PostgresStore {
    /// `sql`, a fenced statement, with its first parameters bound: the store's now, the lease's
    /// job and token, the run.
    pub(crate) fn fenced(&self, sql: &SqlStr, lease: LeaseRef, run: RunId) -> Bound<'static> {
        sqlx::query(sql.clone())
            .bind(self.now_param())
            .bind(lease.job_id.uuid())
            .bind(lease.token.uuid())
            .bind(run.uuid())
    }

    /// The row of `sql` run fenced for `run`: `NotFound` for an unknown run, `LeaseLost` when
    /// `lease` does not hold its drive job.
    pub(crate) async fn fenced_row(
        &self,
        sql: &SqlStr,
        lease: LeaseRef,
        run: RunId,
    ) -> Result<PgRow> {
        let row = self
            .fenced(sql, lease, run)
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(db_error)?
            .ok_or_else(|| no_run(run))?;
        if !get::<bool>(&row, "held")? {
            return Err(lease_lost(run));
        }
        Ok(row)
    }
}

/// `NotFound` for an unknown run, `LeaseLost` when the fence did not hold.
pub(crate) fn check_fence(row: &PgRow, run: RunId) -> Result<()> {
    if !get::<bool>(row, "found")? {
        return Err(no_run(run));
    }
    if !get::<bool>(row, "held")? {
        return Err(lease_lost(run));
    }
    Ok(())
}
