//! Project automation. `cargo xtask ci` is what CI runs (fmt, clippy, the README's test command,
//! rustdoc with warnings denied, the README's main command); `cargo xtask bench` measures;
//! `cargo xtask soak` runs the stores for minutes and checks nothing grows and no job is lost.
//!
//! The README is the single source of the two user commands: the line after
//! `<!-- command:test -->` and the line after `<!-- command:main -->` in README.md are what
//! `ci` runs, so the README can not drift from what CI checks.

mod bench;
mod graph;
mod modules;
mod soak;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("ci") => ci(&root),
        Some("bench") => bench::run(&args[1..]),
        Some("soak") => soak::run(&args[1..]),
        // One store's soak, started by `soak` in a process of its own.
        Some("soak-child") => soak::child_main(&args[1..]),
        Some("graph") => {
            let graph = graph::workspace_graph()?;
            for (name, deps) in &graph {
                println!("{name} -> {}", deps.join(", "));
            }
            let violations = graph::violations(&graph);
            violations.iter().for_each(|v| println!("violation: {v}"));
            anyhow::ensure!(violations.is_empty(), "the crate graph breaks ARCHITECTURE.md");
            Ok(())
        }
        Some("modules") => {
            let mut circles = 0;
            for src in modules::workspace_sources(&root)? {
                for cycle in modules::cycles(&modules::crate_graph(&src)?) {
                    println!("{}: {}", src.display(), cycle.join(" <-> "));
                    circles += 1;
                }
            }
            anyhow::ensure!(circles == 0, "{circles} import circle(s) inside crates");
            Ok(())
        }
        _ => bail!(
            "usage: cargo xtask ci | cargo xtask bench [--store memory] [--quick] | cargo xtask \
             soak [--duration 10m] [--rate 200] [--stores sqlite,postgres,redis] [--sample 10s] \
             [--retention-age 30s] [--no-restart] | cargo xtask graph | cargo xtask modules"
        ),
    }
}

/// The workspace's `cargo metadata` (no dependencies), as `cargo` (a command, so callers and
/// tests can set its environment) reports it.
pub(crate) fn cargo_metadata(mut cargo: Command) -> anyhow::Result<serde_json::Value> {
    let output = cargo
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .output()
        .context("running cargo metadata")?;
    anyhow::ensure!(output.status.success(), "cargo metadata failed");
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn ci(root: &Path) -> anyhow::Result<()> {
    let readme = std::fs::read_to_string(root.join("README.md")).context("reading README.md")?;
    let test = readme_command(&readme, "test")?;
    let main = readme_command(&readme, "main")?;
    run("cargo fmt --all --check")?;
    run("cargo clippy --workspace --all-targets -- -D warnings")?;
    run(&test)?;
    run_with_env("cargo doc --workspace --no-deps", &[("RUSTDOCFLAGS", "-D warnings")])?;
    // Twice: the second run finds the first run's database and must behave the same.
    run(&main)?;
    run(&main)?;
    // The examples must run to the end too.
    run("cargo run -q -p workflow-example")?;
    println!("xtask ci: all steps passed");
    Ok(())
}

/// The command on the line after `<!-- command:NAME -->` in the README.
fn readme_command(readme: &str, name: &str) -> anyhow::Result<String> {
    let marker = format!("<!-- command:{name} -->");
    let mut lines = readme.lines().skip_while(|line| line.trim() != marker).skip(1);
    let command = lines
        .find(|line| !line.trim().is_empty() && !line.trim_start().starts_with("```"))
        .with_context(|| format!("README.md has no command after {marker}"))?;
    Ok(command.trim().to_owned())
}

/// Run a shell-free command line (words split on whitespace); fail when it fails.
pub(crate) fn run(command: &str) -> anyhow::Result<()> {
    run_with_env(command, &[])
}

/// As [`run`], with extra environment variables.
fn run_with_env(command: &str, env: &[(&str, &str)]) -> anyhow::Result<()> {
    println!("xtask: $ {command}");
    let words: Vec<&str> = command.split_whitespace().collect();
    let (program, args) = words.split_first().context("empty command")?;
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("starting {command}"))?;
    if !status.success() {
        bail!("`{command}` failed with {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_commands_are_found_after_their_markers() {
        let readme = "x\n<!-- command:main -->\n```sh\ncargo run -p quickstart\n```\n";
        assert_eq!(readme_command(readme, "main").unwrap(), "cargo run -p quickstart");
        assert!(readme_command(readme, "test").is_err());
    }

    #[test]
    fn the_real_readme_names_both_commands() {
        let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
        assert!(readme_command(&readme, "test").unwrap().starts_with("cargo "));
        assert!(readme_command(&readme, "main").unwrap().starts_with("cargo "));
    }
}
