//! An order pipeline as a durable workflow, driven to the end by this program.
//!
//! Run it with `cargo run -p workflow-example`. Two orders go through the same pipeline on a
//! SQLite file in the temporary directory: reserve stock and charge the card (each with a
//! compensation), ship through a child workflow, wait durably for the delivery event (published
//! here after a moment), sleep durably before asking for a review. The second order's card is
//! declined after the stock was reserved, so its saga releases the stock again. The program
//! prints each run's outcome and its checkpoints, then exits.

use std::time::Duration;

use anyhow::Context;
use dispatch::core::RunId;
use dispatch::prelude::*;
use dispatch::workflow::StepPolicy;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Order {
    id: u32,
    cents: u64,
    card_ok: bool,
}

/// The child workflow: book a carrier and return the tracking number.
fn shipping() -> WorkflowDefinition<u32, String> {
    WorkflowDefinition::new("ship", |wf: WorkflowContext, order: u32| async move {
        wf.step("book-carrier", || async move { Ok::<_, StepError>(format!("TRK-{order:05}")) })
            .await
    })
}

/// The order pipeline.
fn pipeline(ship: WorkflowDefinition<u32, String>) -> WorkflowDefinition<Order, String> {
    WorkflowDefinition::new("order", move |wf: WorkflowContext, order: Order| {
        let ship = ship.clone();
        async move {
            let id = order.id;
            wf.step_with_compensation(
                "reserve-stock",
                || async move { Ok::<_, StepError>(format!("reservation-{id}")) },
                |reservation: String| async move {
                    println!("  saga: released {reservation}");
                    Ok(())
                },
            )
            .await?;
            let once = StepPolicy { attempts: 1, ..StepPolicy::default() };
            let card_ok = order.card_ok;
            wf.step_with("charge-card", &once, || async move {
                if card_ok { Ok(order.cents) } else { Err(StepError::permanent("card declined")) }
            })
            .await?;
            let tracking: String = wf.child(&ship, &id).await?;
            let delivered: Option<String> =
                wf.wait_for_event("delivered", &id.to_string(), Duration::from_secs(30)).await?;
            wf.sleep(Duration::from_millis(300)).await?;
            let review = wf.uuid().await?;
            Ok(format!(
                "order {id}: shipped {tracking}, delivered {}, review link {review}",
                delivered.as_deref().unwrap_or("(no word)")
            ))
        }
    })
}

async fn open_store() -> anyhow::Result<SqliteStore> {
    let path = std::env::temp_dir().join(format!("dispatch-workflow-example-{}.db", RunId::new()));
    Ok(SqliteStore::open(&path.display().to_string()).await?)
}

async fn print_checkpoints(dispatcher: &Dispatcher, run: RunId) -> anyhow::Result<()> {
    for checkpoint in dispatcher.get_checkpoints(run).await? {
        let data = String::from_utf8_lossy(&checkpoint.data);
        println!("    {:<28} {data}", checkpoint.key);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let ship = shipping();
    let order = pipeline(ship.clone());
    let mut dispatcher = Dispatcher::builder()
        .store(open_store().await?)
        .workflow(ship)
        .workflow(order.clone())
        .build()?;
    dispatcher.start().await?;

    let good = Order { id: 1, cents: 1999, card_ok: true };
    let bad = Order { id: 2, cents: 4999, card_ok: false };
    let runs = [
        dispatcher.start_workflow(&order, good).await?,
        dispatcher.start_workflow(&order, bad).await?,
    ];
    // The carrier reports the delivery a moment later; the run waits for it durably.
    tokio::time::sleep(Duration::from_millis(500)).await;
    dispatcher.publish("delivered", "1", &"at the door").await?;

    for run in runs {
        match dispatcher.wait_for_output::<String>(run, Duration::from_secs(60)).await {
            Ok(summary) => println!("completed: {summary}"),
            Err(RunWaitError::Failed { error, .. }) => println!("failed: {error}"),
            Err(other) => return Err(other).context("waiting for the run"),
        }
        print_checkpoints(&dispatcher, run).await?;
    }
    dispatcher.stop().await;
    Ok(())
}
