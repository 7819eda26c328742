//! The crate graph of ARCHITECTURE.md, checked against `cargo metadata`.
//!
//! The graph is a star around `dispatch-core`: stores depend on core only; feature crates on
//! core and, where they schedule jobs, `dispatch-job`; the umbrella on anything. Dev-dependencies
//! are exempt (a store's tests may use the conformance suite).

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::Context;

/// Which workspace crates each workspace crate may depend on (normal and build dependencies).
/// A crate missing here fails the check: add it, and to ARCHITECTURE.md.
pub(crate) fn allowed(name: &str) -> Option<&'static [&'static str]> {
    const CORE: &[&str] = &["dispatch-core"];
    match name {
        "dispatch-core" => Some(&[]),
        "dispatch-store-memory" | "dispatch-job" | "dispatch-cluster" => Some(CORE),
        "dispatch-workflow" | "dispatch-dlq" => Some(&["dispatch-core", "dispatch-job"]),
        // Cron fires as leader work, so it runs under the cluster's leader.
        "dispatch-cron" => Some(&["dispatch-core", "dispatch-job", "dispatch-cluster"]),
        // The conformance suite also drives the job and workflow runtimes over each store, and
        // the cron scheduler's catch-up and overlap policies (under a cluster's leader).
        "dispatch-store-tests" => {
            Some(&["dispatch-core", "dispatch-job", "dispatch-workflow", "dispatch-cron"])
        }
        n if n.starts_with("dispatch-store-") => Some(CORE),
        "dispatch" => Some(&[
            "dispatch-cluster",
            "dispatch-core",
            "dispatch-cron",
            "dispatch-dlq",
            "dispatch-job",
            "dispatch-store-memory",
            "dispatch-store-sqlite",
            "dispatch-store-postgres",
            "dispatch-store-redis",
            "dispatch-workflow",
        ]),
        // Leaves: programs that use the library.
        // The guides' doctests (docs/) compile against the umbrella alone, as users do.
        "dispatch-bench" | "dispatch-docs" | "minimal" | "quickstart" | "workflow-example"
        | "cluster-example" | "cron-example" | "xtask" => Some(&["dispatch"]),
        "dispatch-durability-tests" => Some(&[
            "dispatch",
            "dispatch-store-sqlite",
            "dispatch-store-postgres",
            "dispatch-store-redis",
        ]),
        _ => None,
    }
}

/// Every workspace crate's workspace dependencies (normal and build), from `cargo metadata`.
pub(crate) fn workspace_graph() -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let metadata = crate::cargo_metadata(Command::new(env!("CARGO")))?;
    let packages = metadata["packages"].as_array().context("no packages")?;
    let members: Vec<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let mut graph = BTreeMap::new();
    for package in packages {
        let name = package["name"].as_str().context("package without name")?;
        let deps = package["dependencies"].as_array().context("no dependencies")?;
        let internal = deps
            .iter()
            .filter(|d| d["kind"].as_str() != Some("dev"))
            .filter_map(|d| d["name"].as_str())
            .filter(|d| members.contains(d))
            .map(str::to_owned)
            .collect();
        graph.insert(name.to_owned(), internal);
    }
    Ok(graph)
}

/// The violations of the documented graph, one line each; empty when it holds.
pub(crate) fn violations(graph: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut found = Vec::new();
    for (name, deps) in graph {
        let Some(allowed) = allowed(name) else {
            found.push(format!("crate {name} is not in the documented graph (xtask/src/graph.rs)"));
            continue;
        };
        for dep in deps.iter().filter(|d| !allowed.contains(&d.as_str())) {
            found.push(format!("{name} must not depend on {dep}; allowed: {allowed:?}"));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_graph_is_the_documented_star() {
        let graph = workspace_graph().unwrap();
        assert!(graph.contains_key("dispatch-core"), "{graph:?}");
        assert_eq!(violations(&graph), Vec::<String>::new());
    }

    #[test]
    fn a_store_depending_on_the_runtime_is_caught() {
        let mut graph = BTreeMap::new();
        graph.insert("dispatch-store-sqlite".to_owned(), vec!["dispatch-job".to_owned()]);
        assert_eq!(violations(&graph).len(), 1);
    }

    #[test]
    fn every_store_crate_is_held_to_core_only() {
        for store in ["dispatch-store-sqlite", "dispatch-store-postgres", "dispatch-store-redis"] {
            assert_eq!(allowed(store), Some(&["dispatch-core"][..]), "{store}");
        }
    }

    #[test]
    fn stores_depend_on_core_only() {
        let graph = workspace_graph().unwrap();
        // The conformance suite is a test-support crate, not a store.
        let stores = graph
            .iter()
            .filter(|(n, _)| n.starts_with("dispatch-store-") && *n != "dispatch-store-tests");
        for (name, deps) in stores {
            assert!(deps.iter().all(|d| d == "dispatch-core"), "{name} depends on {deps:?}");
        }
    }
}
