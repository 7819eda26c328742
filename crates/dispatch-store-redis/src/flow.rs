//! `impl FlowStore`: queue configs (`lua/flow_set_config.lua`, `flow_read.lua`,
//! `flow_delete.lua`, `flow_pause.lua`) and progress reports (`lua/progress.lua`), one script
//! call each. The gates themselves are kept by the transitions: a gated claim admits and counts
//! (`lua/claim.lua` with `lua/admission.lua`), every path out of running releases
//! (`lua/flow.lua`'s `release_gates`, called by `jobs.lua`'s `clear_lease`).

use async_trait::async_trait;
use dispatch_core::{FlowStore, ProgressUpdate, QueueConfig, QueueFlow, Result};
use redis::Value;

use crate::RedisStore;
use crate::error::internal;
use crate::keys::hex;
use crate::row::{array, int, option_arg, string};

#[async_trait]
impl FlowStore for RedisStore {
    async fn set_queue_config(&self, config: &QueueConfig) -> Result<QueueFlow> {
        config.validate()?;
        let json = serde_json::to_string(config)
            .map_err(|e| internal(format!("a queue config did not encode: {e}")))?;
        let mut call = self.call(&self.inner.scripts.flow_set_config);
        call.arg(&config.queue).arg(json);
        let running = count(self.invoke(&call).await?)?;
        Ok(QueueFlow { config: config.clone(), running })
    }

    async fn queue_flow(&self, queue: &str) -> Result<Option<QueueFlow>> {
        if queue.is_empty() {
            return Ok(None);
        }
        Ok(self.read_flows(queue).await?.into_iter().next())
    }

    async fn list_queue_flows(&self) -> Result<Vec<QueueFlow>> {
        let mut flows = self.read_flows("").await?;
        flows.sort_by(|a, b| a.config.queue.cmp(&b.config.queue));
        Ok(flows)
    }

    async fn delete_queue_config(&self, queue: &str) -> Result<bool> {
        let mut call = self.call(&self.inner.scripts.flow_delete);
        call.arg(queue);
        Ok(int(self.invoke(&call).await?)? == 1)
    }

    async fn set_paused(&self, queue: &str, name: Option<&str>, paused: bool) -> Result<bool> {
        QueueConfig::new(queue).validate()?;
        let mut call = self.call(&self.inner.scripts.flow_pause);
        call.arg(queue).arg(option_arg(name)).arg(if paused { "1" } else { "0" });
        Ok(int(self.invoke(&call).await?)? == 1)
    }

    async fn record_progress(&self, updates: &[ProgressUpdate]) -> Result<Vec<bool>> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = self.call(&self.inner.scripts.progress);
        for update in updates {
            let json = serde_json::to_string(&update.progress)
                .map_err(|e| internal(format!("a progress report did not encode: {e}")))?;
            call.arg(hex(update.lease.job_id.uuid())).arg(hex(update.lease.token.uuid())).arg(json);
        }
        let codes = array(self.invoke(&call).await?)?;
        if codes.len() != updates.len() {
            return Err(internal(format!(
                "progress answered {} of {} reports",
                codes.len(),
                updates.len()
            )));
        }
        codes.into_iter().map(|code| Ok(int(code)? == 1)).collect()
    }
}

impl RedisStore {
    /// The flows of `queue` ('' for every queue with a config), in no order.
    async fn read_flows(&self, queue: &str) -> Result<Vec<QueueFlow>> {
        let mut call = self.call(&self.inner.scripts.flow_read);
        call.arg(queue);
        let items = array(self.invoke(&call).await?)?;
        if items.len() % 3 != 0 {
            return Err(internal("a queue flow listing is not in threes"));
        }
        let mut flows = Vec::with_capacity(items.len() / 3);
        let mut items = items.into_iter();
        while let (Some(_queue), Some(json), Some(running)) =
            (items.next(), items.next(), items.next())
        {
            let config: QueueConfig = serde_json::from_str(&string(json)?)
                .map_err(|e| internal(format!("a corrupt queue config: {e}")))?;
            flows.push(QueueFlow { config, running: count(running)? });
        }
        Ok(flows)
    }
}

/// A running count from a script (never negative: the scripts keep gates at zero or above).
fn count(value: Value) -> Result<u64> {
    u64::try_from(int(value)?).map_err(|_| internal("a negative running count"))
}
