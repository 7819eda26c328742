//! Deterministic helpers: values that differ between runs (the time, random numbers, UUIDs),
//! journaled on first use and read back on every drive, so workflow code that branches on them
//! takes the same path after a resume.

use dispatch_core::Timestamp;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::WorkflowContext;
use crate::error::WorkflowError;
use crate::record::{self, Kind};

impl WorkflowContext {
    /// Now, on the store's clock, as first seen by this call.
    pub async fn now(&self) -> Result<Timestamp, WorkflowError> {
        let now = self.drive().now().as_unix_micros();
        self.journal("now", now).await.map(Timestamp::from_unix_micros)
    }

    /// A random number, the same on every drive.
    pub async fn random(&self) -> Result<u64, WorkflowError> {
        self.journal("random", rand::random::<u64>()).await
    }

    /// A new (v4) UUID, the same on every drive.
    pub async fn uuid(&self) -> Result<uuid::Uuid, WorkflowError> {
        self.journal("uuid", uuid::Uuid::new_v4()).await
    }

    /// The value journaled for the next call named `name`, or `fresh`, journaled now.
    async fn journal<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
        fresh: T,
    ) -> Result<T, WorkflowError> {
        let key = self.next_key(Kind::Value, name);
        if let Some(data) = self.drive().checkpoint(&key) {
            return serde_json::from_slice(&data)
                .map_err(|e| WorkflowError::Codec(format!("checkpoint {key}: {e}")));
        }
        self.drive().write(key, record::encode(&fresh)).await;
        Ok(fresh)
    }
}
