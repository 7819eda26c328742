//! Flow control's rows: queue configs (`queue_configs`, the [`QueueConfig`] as JSON) and gate
//! states (`flow_gates`), read and written inside the caller's transaction by the gated claim
//! (`flow/claim.rs`), enqueue (a keyed job's default config) and the `FlowStore` calls
//! (`flow.rs`). The release of a counted job's slots is the `jobs_flow_release` trigger
//! (migration 0010), so every path out of `running` takes it.

use std::collections::BTreeMap;

use dispatch_core::flow::{GateState, held_gates};
use dispatch_core::{Error, QueueConfig, Result, Timestamp};
use sqlx::{Row, SqliteConnection};

use crate::error::db_error;

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("sqlite: corrupt {what}: {e}"))
}

/// A config as stored (JSON).
pub(crate) fn config_json(config: &QueueConfig) -> Result<String> {
    serde_json::to_string(config).map_err(|e| corrupt("queue config", e))
}

/// A stored config.
pub(crate) fn config_from_text(text: &str) -> Result<QueueConfig> {
    serde_json::from_str(text).map_err(|e| corrupt("queue config", e))
}

/// A JSON array of strings, as `json_each(?)` takes it.
pub(crate) fn json_list<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<String> {
    let items: Vec<&str> = items.into_iter().collect();
    serde_json::to_string(&items).map_err(|e| Error::internal(format!("sqlite: {e}")))
}

/// Give `queue` a default config ([`QueueConfig::new`]) unless it has one. Answers whether it
/// was inserted.
pub(crate) async fn insert_default_config(
    conn: &mut SqliteConnection,
    queue: &str,
) -> Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO queue_configs (queue, config) VALUES (?, ?) ON CONFLICT (queue) DO NOTHING",
    )
    .bind(queue)
    .bind(config_json(&QueueConfig::new(queue))?)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?
    .rows_affected();
    if inserted > 0 {
        count_running(conn, queue).await?;
    }
    Ok(inserted > 0)
}

/// The config of `queue`, if it has one.
pub(crate) async fn load_config(
    conn: &mut SqliteConnection,
    queue: &str,
) -> Result<Option<QueueConfig>> {
    let text: Option<String> =
        sqlx::query_scalar("SELECT config FROM queue_configs WHERE queue = ?")
            .bind(queue)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_error)?;
    text.as_deref().map(config_from_text).transpose()
}

/// The configs of those of `queues` that have one.
pub(crate) async fn load_configs(
    conn: &mut SqliteConnection,
    queues: &[String],
) -> Result<Vec<QueueConfig>> {
    let json = json_list(queues.iter().map(String::as_str))?;
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT config FROM queue_configs WHERE queue IN (SELECT value FROM json_each(?))",
    )
    .bind(json)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    rows.iter().map(|text| config_from_text(text)).collect()
}

/// Store `config` (insert or replace). Answers whether the queue had no config before.
pub(crate) async fn save_config(conn: &mut SqliteConnection, config: &QueueConfig) -> Result<bool> {
    let first = load_config(conn, &config.queue).await?.is_none();
    sqlx::query(
        "INSERT INTO queue_configs (queue, config) VALUES (?, ?) \
         ON CONFLICT (queue) DO UPDATE SET config = excluded.config",
    )
    .bind(config.queue.as_str())
    .bind(config_json(config)?)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(first)
}

/// The stored states of `gates` (gates never passed have no row and are left out).
pub(crate) async fn load_gates(
    conn: &mut SqliteConnection,
    gates: &[String],
) -> Result<Vec<(String, GateState)>> {
    if gates.is_empty() {
        return Ok(Vec::new());
    }
    let json = json_list(gates.iter().map(String::as_str))?;
    let rows = sqlx::query(
        "SELECT gate, running, tat FROM flow_gates WHERE gate IN (SELECT value FROM json_each(?))",
    )
    .bind(json)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    rows.iter()
        .map(|row| {
            let gate: String = row.try_get(0).map_err(db_error)?;
            let state =
                gate_state(row.try_get(1).map_err(db_error)?, row.try_get(2).map_err(db_error)?);
            Ok((gate, state))
        })
        .collect()
}

/// A gate state from its columns (a negative count reads as none running).
pub(crate) fn gate_state(running: i64, tat: i64) -> GateState {
    GateState {
        running: u64::try_from(running).unwrap_or(0),
        tat: Timestamp::from_unix_micros(tat),
    }
}

/// The running count of one gate (0 for a gate never passed).
pub(crate) async fn gate_running(conn: &mut SqliteConnection, gate: &str) -> Result<u64> {
    let running: Option<i64> = sqlx::query_scalar("SELECT running FROM flow_gates WHERE gate = ?")
        .bind(gate)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(running.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
}

/// Write gate states (insert or replace each), in one statement.
pub(crate) async fn write_gates<'a>(
    conn: &mut SqliteConnection,
    gates: impl IntoIterator<Item = (&'a str, GateState)>,
) -> Result<()> {
    let rows: Vec<(&str, i64, i64)> = gates
        .into_iter()
        .map(|(gate, s)| {
            (gate, i64::try_from(s.running).unwrap_or(i64::MAX), s.tat.as_unix_micros())
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_string(&rows).map_err(|e| Error::internal(format!("sqlite: {e}")))?;
    // `WHERE true` tells the parser the `ON CONFLICT` belongs to the insert, not to a join.
    sqlx::query(
        "INSERT INTO flow_gates (gate, running, tat) \
         SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
         json_extract(value, '$[2]') FROM json_each(?) WHERE true \
         ON CONFLICT (gate) DO UPDATE SET running = excluded.running, tat = excluded.tat",
    )
    .bind(json)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Add `counts` to the running counts of their gates (a gate without a row starts at 0), in one
/// statement.
pub(crate) async fn add_running(
    conn: &mut SqliteConnection,
    counts: &BTreeMap<String, u64>,
) -> Result<()> {
    if counts.is_empty() {
        return Ok(());
    }
    let rows: Vec<(&str, u64)> = counts.iter().map(|(g, n)| (g.as_str(), *n)).collect();
    let json = serde_json::to_string(&rows).map_err(|e| Error::internal(format!("sqlite: {e}")))?;
    sqlx::query(
        "INSERT INTO flow_gates (gate, running, tat) \
         SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), 0 \
         FROM json_each(?) WHERE true \
         ON CONFLICT (gate) DO UPDATE SET running = running + excluded.running",
    )
    .bind(json)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Count the running jobs of `queue` that no gated claim counted into their held gates, and mark
/// them counted (a queue's first config: its limits hold from the next claim on). The running
/// jobs are found through the lease index, which holds only running jobs.
pub(crate) async fn count_running(conn: &mut SqliteConnection, queue: &str) -> Result<()> {
    let rows = sqlx::query(
        "UPDATE jobs SET flow_counted = 1 WHERE seq IN (SELECT seq FROM jobs INDEXED BY jobs_lease \
         WHERE state = 'running' AND queue = ? AND flow_counted IS NULL) \
         RETURNING scope_tenant, concurrency_key",
    )
    .bind(queue)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    let mut counts = BTreeMap::new();
    for row in rows {
        let tenant: Option<String> = row.try_get(0).map_err(db_error)?;
        let key: Option<String> = row.try_get(1).map_err(db_error)?;
        for gate in held_gates(queue, tenant.as_deref(), key.as_deref()) {
            *counts.entry(gate).or_insert(0) += 1;
        }
    }
    add_running(conn, &counts).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `next_due` (`claim.rs`) reads the stored JSON with `json_extract(config, '$.paused')` and
    /// `json_each(config, '$.paused_names')`: those fields keep their names and shapes, and a
    /// config stored before them reads back.
    #[test]
    fn stored_configs_keep_the_fields_sql_reads() {
        let mut config = QueueConfig::new("q").max_running(3);
        config.paused = true;
        config.paused_names.insert("send".to_owned());
        let json: serde_json::Value = serde_json::from_str(&config_json(&config).unwrap()).unwrap();
        assert_eq!(json["paused"], serde_json::json!(true));
        assert_eq!(json["paused_names"], serde_json::json!(["send"]));
        assert_eq!(config_from_text(&config_json(&config).unwrap()).unwrap(), config);
        let stored = r#"{"queue":"q","limits":{"max_running":3,"rate":null},
            "tenant_limits":{"max_running":null,"rate":null},"fair":false,"paused":true,
            "paused_names":["send"]}"#;
        assert_eq!(config_from_text(stored).unwrap(), config);
    }
}
