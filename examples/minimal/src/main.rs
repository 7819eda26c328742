//! The smallest complete Dispatch program: one job kind on a SQLite file, a job that completes
//! and one that dies, their outcomes, the job list and the dead letter queue. Only the prelude
//! is imported: no store trait, no `sqlx`. Run it with `cargo run -p minimal`.

use std::time::Duration;

use dispatch::prelude::*;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::temp_dir().join(format!("dispatch-minimal-{}.db", JobId::new()));
    run(&path.display().to_string()).await
}

async fn run(path: &str) -> anyhow::Result<()> {
    let resize = JobDefinition::new("resize", |_ctx: JobContext, image: String| async move {
        if image.ends_with(".gif") {
            return Err(JobError::permanent("gifs are not supported"));
        }
        Ok(())
    });
    let mut dispatcher = Dispatcher::builder()
        .store(SqliteStore::open(path).await?)
        .register(resize.clone())
        .build()?;
    dispatcher.start().await?;

    let cat = dispatcher.enqueue(&resize, "cat.png".into()).await?.id();
    let dog = dispatcher.enqueue(&resize, "dog.gif".into()).await?.id();
    println!("cat: {}", dispatcher.wait(cat, Duration::from_secs(10)).await?.state);
    println!("dog: {}", dispatcher.wait(dog, Duration::from_secs(10)).await.unwrap_err());

    for job in dispatcher.list_jobs(&JobFilter::default(), &PageRequest::first(10)).await?.items {
        println!("{} {} {}", job.id, job.name, job.state);
    }
    for entry in dispatcher.list_dlq(&DlqFilter::default(), &PageRequest::first(10)).await?.items {
        println!("dead: {} after {} attempt(s)", entry.job_id, entry.attempts);
    }
    dispatcher.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_minimal_program_runs_to_the_end() {
        let dir =
            std::env::temp_dir().join(format!("dispatch-minimal-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        super::run(&dir.join("jobs.db").display().to_string()).await.unwrap();
    }
}
