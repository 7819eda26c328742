//! The soak's options, parsed from the command line (the parent's) and passed on to each
//! store's child process in the same spelling.

use std::time::Duration;

use anyhow::{Context, bail};

/// What a soak runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Options {
    /// How long jobs are enqueued (the drain at the end comes on top).
    pub duration: Duration,
    /// Plain jobs enqueued per second, per store (workflow runs come on top, a twentieth of it).
    pub rate: u32,
    /// The stores, each soaked in a child process of its own (`memory` may be added: a check
    /// of the soak itself, with the reference store).
    pub stores: Vec<String>,
    /// How often each child samples.
    pub sample: Duration,
    /// How long finished jobs and ended runs are kept (the leader prunes a third as often).
    pub retention_age: Duration,
    /// Restart the soak's PostgreSQL server half-way through.
    pub restart: bool,
    /// The port of the soak's own PostgreSQL server.
    pub postgres_port: u16,
    /// The PostgreSQL URL a child connects to (set by the parent).
    pub postgres_url: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(600),
            rate: 200,
            stores: vec!["sqlite".into(), "postgres".into(), "redis".into()],
            sample: Duration::from_secs(10),
            retention_age: Duration::from_secs(30),
            restart: true,
            postgres_port: 5433,
            postgres_url: None,
        }
    }
}

impl Options {
    /// Parse `--duration 10m --rate 200 --stores sqlite,postgres --sample 10s
    /// --retention-age 30s --no-restart --postgres-port 5433 [--postgres-url URL]`.
    pub(crate) fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut options = Self::default();
        let mut rest = args.iter();
        while let Some(flag) = rest.next() {
            if flag == "--no-restart" {
                options.restart = false;
                continue;
            }
            let value = rest.next().with_context(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--duration" => options.duration = duration(value)?,
                "--rate" => options.rate = value.parse().context("--rate: jobs per second")?,
                "--stores" | "--store" => {
                    options.stores = value.split(',').map(str::to_owned).collect();
                }
                "--sample" => options.sample = duration(value)?,
                "--retention-age" => options.retention_age = duration(value)?,
                "--postgres-port" => options.postgres_port = value.parse()?,
                "--postgres-url" => options.postgres_url = Some(value.clone()),
                other => bail!("unknown soak option {other}"),
            }
        }
        for store in &options.stores {
            if !["sqlite", "postgres", "redis", "memory"].contains(&store.as_str()) {
                bail!("unknown store {store:?} (known: sqlite, postgres, redis, memory)");
            }
        }
        anyhow::ensure!(options.rate > 0, "--rate must be at least 1");
        anyhow::ensure!(!options.sample.is_zero(), "--sample must be positive");
        anyhow::ensure!(options.retention_age >= Duration::from_secs(3), "--retention-age >= 3s");
        Ok(options)
    }

    /// The arguments that give a child `store`'s share of these options.
    pub(crate) fn child_args(&self, store: &str) -> Vec<String> {
        let mut args = vec![
            "--duration".into(),
            format!("{}s", self.duration.as_secs()),
            "--rate".into(),
            self.rate.to_string(),
            "--store".into(),
            store.to_owned(),
            "--sample".into(),
            format!("{}s", self.sample.as_secs()),
            "--retention-age".into(),
            format!("{}s", self.retention_age.as_secs()),
        ];
        if let Some(url) = &self.postgres_url {
            args.extend(["--postgres-url".into(), url.clone()]);
        }
        args
    }
}

/// `90`, `90s`, `10m` or `1h`.
pub(crate) fn duration(text: &str) -> anyhow::Result<Duration> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 = number.parse().with_context(|| format!("not a duration: {text:?}"))?;
    let seconds = match unit {
        "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        _ => bail!("not a duration: {text:?} (use 90s, 10m or 1h)"),
    };
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_seconds_minutes_and_hours() {
        assert_eq!(duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(duration("10m").unwrap(), Duration::from_secs(600));
        assert!(duration("10 minutes").is_err());
    }

    #[test]
    fn a_childs_arguments_parse_back_to_its_share() {
        let args: Vec<String> =
            ["--duration", "3m", "--rate", "50", "--sample", "5s"].map(String::from).to_vec();
        let parent = Options::parse(&args).unwrap();
        let child = Options::parse(&parent.child_args("redis")).unwrap();
        assert_eq!(child.stores, ["redis"]);
        assert_eq!((child.duration, child.rate), (Duration::from_secs(180), 50));
        assert_eq!(child.sample, Duration::from_secs(5));
    }
}
