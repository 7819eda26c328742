//! [`FlowStore`] for [`SqliteStore`]: queue configs, pauses and progress reports, each call one
//! `BEGIN IMMEDIATE` transaction on the writer (reads of configs use the reader pool). The claim
//! that enforces the configs is [`claim`]; the config and gate rows are [`gate`]; a counted
//! job's slots are given back by the `jobs_flow_release` trigger (migration 0010) on every path
//! out of running.

pub(crate) mod claim;
pub(crate) mod gate;

use std::collections::HashSet;

use async_trait::async_trait;
use dispatch_core::flow::queue_gate;
use dispatch_core::{Error, FlowStore, ProgressUpdate, QueueConfig, QueueFlow, Result};
use sqlx::{Row, SqliteConnection};

use self::gate::{
    config_from_text, config_json, count_running, gate_running, insert_default_config, load_config,
    save_config,
};
use crate::SqliteStore;
use crate::error::db_error;
use crate::row::token_text;

#[async_trait]
impl FlowStore for SqliteStore {
    async fn set_queue_config(&self, config: &QueueConfig) -> Result<QueueFlow> {
        config.validate()?;
        let config = config.clone();
        self.write("set_queue_config", move |conn| {
            Box::pin(async move {
                if save_config(conn, &config).await? {
                    count_running(conn, &config.queue).await?;
                }
                let running = gate_running(conn, &queue_gate(&config.queue)).await?;
                Ok(QueueFlow { config, running })
            })
        })
        .await
    }

    async fn queue_flow(&self, queue: &str) -> Result<Option<QueueFlow>> {
        self.timed("queue_flow", async {
            let mut conn = self.readers.acquire().await.map_err(db_error)?;
            let Some(config) = load_config(&mut conn, queue).await? else { return Ok(None) };
            let running = gate_running(&mut conn, &queue_gate(queue)).await?;
            Ok(Some(QueueFlow { config, running }))
        })
        .await
    }

    async fn list_queue_flows(&self) -> Result<Vec<QueueFlow>> {
        self.timed("list_queue_flows", async {
            // Each config with its queue gate's count (a gate never passed has no row).
            let rows = sqlx::query(
                "SELECT c.config, ifnull(g.running, 0) FROM queue_configs AS c \
                 LEFT JOIN flow_gates AS g ON g.gate = 'q' || char(31) || c.queue \
                 ORDER BY c.queue",
            )
            .fetch_all(&self.readers)
            .await
            .map_err(db_error)?;
            rows.iter()
                .map(|row| {
                    let config = config_from_text(&row.try_get::<String, _>(0).map_err(db_error)?)?;
                    let running: i64 = row.try_get(1).map_err(db_error)?;
                    Ok(QueueFlow { config, running: u64::try_from(running).unwrap_or(0) })
                })
                .collect()
        })
        .await
    }

    async fn delete_queue_config(&self, queue: &str) -> Result<bool> {
        let queue = queue.to_owned();
        self.write("delete_queue_config", move |conn| {
            Box::pin(async move {
                // The gates stay: counted jobs still running give their slots back on release.
                let deleted = sqlx::query("DELETE FROM queue_configs WHERE queue = ?")
                    .bind(queue.as_str())
                    .execute(&mut *conn)
                    .await
                    .map_err(db_error)?
                    .rows_affected();
                Ok(deleted > 0)
            })
        })
        .await
    }

    async fn set_paused(&self, queue: &str, name: Option<&str>, paused: bool) -> Result<bool> {
        QueueConfig::new(queue).validate()?;
        let owned = (queue.to_owned(), name.map(str::to_owned));
        let changed = self
            .write("set_paused", move |conn| {
                Box::pin(async move {
                    let (queue, name) = owned;
                    set_paused(conn, &queue, name.as_deref(), paused).await
                })
            })
            .await?;
        if changed && !paused {
            // Idle workers of this process sleep past paused queues: a resume wakes them.
            self.wakeups.notify([queue]);
        }
        Ok(changed)
    }

    async fn record_progress(&self, updates: &[ProgressUpdate]) -> Result<Vec<bool>> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let updates = updates.to_vec();
        self.write("record_progress", move |conn| {
            Box::pin(async move { record_progress(conn, &updates).await })
        })
        .await
    }
}

/// Pause or resume `queue` (or its jobs of `name`) in the caller's transaction; a queue without
/// a config gets a default one first. Answers whether the config changed.
async fn set_paused(
    conn: &mut SqliteConnection,
    queue: &str,
    name: Option<&str>,
    paused: bool,
) -> Result<bool> {
    insert_default_config(conn, queue).await?;
    let mut config = load_config(conn, queue)
        .await?
        .ok_or_else(|| Error::internal("sqlite: queue config missing after its insert"))?;
    let changed = match name {
        None => std::mem::replace(&mut config.paused, paused) != paused,
        Some(name) if paused => config.paused_names.insert(name.to_owned()),
        Some(name) => config.paused_names.remove(name),
    };
    if changed {
        sqlx::query("UPDATE queue_configs SET config = ? WHERE queue = ?")
            .bind(config_json(&config)?)
            .bind(queue)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
    }
    Ok(changed)
}

/// Write each progress report whose lease still holds its running job; one answer per item. A
/// batch naming a job once is one statement; one naming a job twice is written item by item, so
/// the last report wins and each answers as it would alone.
async fn record_progress(
    conn: &mut SqliteConnection,
    updates: &[ProgressUpdate],
) -> Result<Vec<bool>> {
    let mut seen = HashSet::with_capacity(updates.len());
    if !updates.iter().all(|u| seen.insert(u.lease.job_id)) {
        let mut results = Vec::with_capacity(updates.len());
        for update in updates {
            results.push(write_progress(conn, std::slice::from_ref(update)).await?[0]);
        }
        return Ok(results);
    }
    write_progress(conn, updates).await
}

/// One statement writing `updates` (each job at most once), answering per item.
async fn write_progress(
    conn: &mut SqliteConnection,
    updates: &[ProgressUpdate],
) -> Result<Vec<bool>> {
    let rows: Vec<(String, String, String)> = updates
        .iter()
        .map(|u| {
            let progress = serde_json::to_string(&u.progress).map_err(internal)?;
            Ok((u.lease.job_id.to_string(), token_text(u.lease.token), progress))
        })
        .collect::<Result<_>>()?;
    let json = serde_json::to_string(&rows).map_err(internal)?;
    // `+jobs.state`: looked up by ID, not through the index of running jobs (see `finish.rs`).
    let written = sqlx::query(
        "UPDATE jobs SET progress = f.progress FROM (SELECT json_extract(value, '$[0]') AS id, \
         json_extract(value, '$[1]') AS token, json_extract(value, '$[2]') AS progress \
         FROM json_each(?)) AS f \
         WHERE jobs.id = f.id AND +jobs.state = 'running' AND jobs.lease_token = f.token \
         RETURNING jobs.id",
    )
    .bind(json)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    let written: HashSet<String> = written
        .iter()
        .map(|row| row.try_get::<String, _>(0).map_err(db_error))
        .collect::<Result<_>>()?;
    Ok(updates.iter().map(|u| written.contains(&u.lease.job_id.to_string())).collect())
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("sqlite: {e}"))
}
