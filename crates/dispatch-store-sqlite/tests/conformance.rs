//! Runs the `dispatch-store-tests` conformance suite on the SQLite store: every test gets a fresh
//! database file in its own temporary path, reading the test's manual clock. Run with
//! `cargo test -p dispatch-store-sqlite --test conformance`.

use std::path::PathBuf;
use std::process::ExitCode;

use dispatch_core::SharedClock;
use dispatch_store_sqlite::SqliteStore;
use dispatch_store_tests::StoreFactory;

/// Makes a fresh database file per test under the system temporary directory.
struct Sqlite {
    dir: PathBuf,
}

#[async_trait::async_trait]
impl StoreFactory for Sqlite {
    type Store = SqliteStore;

    fn name(&self) -> &str {
        "sqlite"
    }

    async fn create(&self, clock: Option<SharedClock>) -> dispatch_core::Result<SqliteStore> {
        let path = self.dir.join(format!("{}.db", uuid::Uuid::new_v4().simple()));
        let path = path.to_str().expect("temporary paths are UTF-8");
        let store = SqliteStore::open(path).await?;
        Ok(match clock {
            Some(clock) => store.with_clock(clock),
            None => store,
        })
    }
}

fn main() -> ExitCode {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let dir = std::env::temp_dir().join("dispatch-sqlite-tests").join(run);
    std::fs::create_dir_all(&dir).expect("create the test directory");
    let code = dispatch_store_tests::run_conformance(Sqlite { dir: dir.clone() });
    // Best effort: the files of this run are no longer needed.
    let _ = std::fs::remove_dir_all(&dir);
    code
}
