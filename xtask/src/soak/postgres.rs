//! The soak's own PostgreSQL 15 server: a fresh cluster in a temporary directory on a port of
//! its own, run as the `postgres` user, so restarting it in the middle of the soak disturbs
//! nothing else on the machine. Stopped and removed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, bail};

/// Where the server binaries live (Debian's layout).
const BIN: &str = "/usr/lib/postgresql/15/bin";
/// The operating-system user that owns the cluster (initdb refuses to run as root).
const OWNER: &str = "postgres";

/// A running throwaway server.
pub(crate) struct Instance {
    dir: PathBuf,
    port: u16,
}

impl Instance {
    /// initdb into a new temporary directory and start the server on `port` (trust auth,
    /// sockets in the directory too, so the machine's own server's socket is never touched).
    pub(crate) fn start(port: u16) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("dispatch-soak-pg-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        // The directory must belong to the server's user; chown keeps it to one tool.
        check(Command::new("chown").args([OWNER, &path_str(&dir)?]).output()?, "chown")?;
        let instance = Self { dir, port };
        let data = path_str(&instance.data())?;
        instance
            .as_owner("initdb", &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"])?;
        let settings = instance.settings()?;
        instance.as_owner(
            "pg_ctl",
            &["start", "-D", &data, "-w", "-l", &instance.log()?, "-o", &settings],
        )?;
        instance.as_owner(
            "createdb",
            &["-h", &path_str(&instance.dir)?, "-p", &port.to_string(), "-U", "postgres", "soak"],
        )?;
        Ok(instance)
    }

    /// The URL the soak connects to.
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/soak", self.port)
    }

    /// `pg_ctl restart -m fast`: every connection is cut, the server comes back within seconds.
    /// Returns how long it took.
    pub(crate) fn restart(&self) -> anyhow::Result<Duration> {
        let started = tokio::time::Instant::now();
        let data = path_str(&self.data())?;
        let settings = self.settings()?;
        self.as_owner(
            "pg_ctl",
            &["restart", "-m", "fast", "-D", &data, "-w", "-l", &self.log()?, "-o", &settings],
        )?;
        Ok(started.elapsed())
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> anyhow::Result<String> {
        path_str(&self.dir.join("server.log"))
    }

    /// Server options: the port, sockets in the instance directory, and a small autovacuum
    /// naptime, as a production server watching a hot queue table would have.
    fn settings(&self) -> anyhow::Result<String> {
        Ok(format!(
            "-p {} -c unix_socket_directories={} -c listen_addresses=127.0.0.1 \
             -c autovacuum_naptime=10s -c fsync=on",
            self.port,
            path_str(&self.dir)?
        ))
    }

    fn as_owner(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let binary = Path::new(BIN).join(program);
        let output = Command::new("runuser")
            .args(["-u", OWNER, "--"])
            .arg(&binary)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .with_context(|| format!("starting {program} as {OWNER}"))?;
        check(output, program)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Ok(data) = path_str(&self.data()) {
            let stopped = self.as_owner("pg_ctl", &["stop", "-m", "immediate", "-D", &data, "-w"]);
            if let Err(error) = stopped {
                eprintln!("soak: stopping the soak's PostgreSQL: {error:#}");
            }
        }
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("soak: removing {}: {error}", self.dir.display());
        }
    }
}

fn path_str(path: &Path) -> anyhow::Result<String> {
    path.to_str().map(str::to_owned).with_context(|| format!("{} is not UTF-8", path.display()))
}

fn check(output: Output, what: &str) -> anyhow::Result<()> {
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
