//! Batched finishes: attempts end one by one, the store hears about them in batches.
//!
//! One task gathers every finish waiting in its channel (up to the batch size) into one
//! `JobStore::finish` call. Under load a batch forms while the previous call is in flight; at
//! rest a lone finish goes out at once, so batching adds no latency. A failed call is retried
//! with backoff: finishes are idempotent (a repeat answers "already applied").

use std::time::Duration;

use dispatch_core::{DynStore, Finish, FinishResult, Result};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub(crate) struct FinishRequest {
    pub(crate) finish: Finish,
    pub(crate) reply: oneshot::Sender<Result<FinishResult>>,
}

const RETRIES: u32 = 6;

pub(crate) async fn run(
    store: DynStore,
    mut rx: mpsc::Receiver<FinishRequest>,
    batch: usize,
    store_timeout: Duration,
    halt: CancellationToken,
) {
    let mut requests = Vec::with_capacity(batch);
    loop {
        // On halt, close the channel and keep going: what is queued is still written.
        let received = tokio::select! {
            biased;
            n = rx.recv_many(&mut requests, batch) => n,
            _ = halt.cancelled(), if !rx.is_closed() => {
                rx.close();
                continue;
            }
        };
        if received == 0 {
            return;
        }
        let (finishes, replies): (Vec<_>, Vec<_>) =
            requests.drain(..).map(|r| (r.finish, r.reply)).unzip();
        match finish_with_retry(&store, finishes, store_timeout).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(error) => {
                tracing::error!(%error, "finishing jobs failed; their leases will expire and be rescued");
                for reply in replies {
                    let _ =
                        reply.send(Err(dispatch_core::Error::new(error.kind(), error.to_string())));
                }
            }
        }
    }
}

async fn finish_with_retry(
    store: &DynStore,
    finishes: Vec<Finish>,
    store_timeout: Duration,
) -> Result<Vec<FinishResult>> {
    let mut delay = Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        let call = tokio::time::timeout(store_timeout, store.finish(finishes.clone()));
        let error = match call.await {
            Ok(Ok(results)) if results.len() == finishes.len() => return Ok(results),
            Ok(Ok(_)) => {
                dispatch_core::Error::internal("store returned the wrong number of results")
            }
            Ok(Err(error)) => error,
            Err(_) => {
                dispatch_core::Error::new(dispatch_core::ErrorKind::Timeout, "finish timed out")
            }
        };
        if attempt >= RETRIES || !error.kind().is_transient() {
            return Err(error);
        }
        tracing::warn!(%error, attempt, "finish failed; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
        attempt += 1;
    }
}
