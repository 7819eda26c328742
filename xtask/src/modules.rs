//! No import circles inside a crate: the module graph of every workspace crate, read from its
//! source, must have no cycle.
//!
//! A module is a file under a crate's `src/` (`src/a/b.rs` and `src/a/b/mod.rs` are `a::b`;
//! `lib.rs` and `main.rs` are the root). Module `m` depends on module `n` when `m`'s code names
//! a path into `n` through `crate::` or `super::` (in a `use` or inline), resolved to the
//! longest path that is a module. Not counted, on purpose:
//! - a parent naming its own children (`mod x; pub use x::Item;`): a parent that re-exports its
//!   children is a facade, not a tangle; a child naming its parent's items is counted;
//! - paths to the root (`crate::Item` of a re-export): the root only declares and re-exports;
//! - test code after the first `#[cfg(test)]` of a file, and comments.
//!
//! Why: a circle means neither module can be read, tested or moved without the other; a new
//! store or feature crate copies whatever tangle it finds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Module path (`a::b`, empty for the root) → the modules it depends on.
pub(crate) type ModuleGraph = BTreeMap<String, BTreeSet<String>>;

/// The module graph of the crate whose `src/` is `src`.
pub(crate) fn crate_graph(src: &Path) -> anyhow::Result<ModuleGraph> {
    let mut files = Vec::new();
    collect_rs(src, &mut files)?;
    let modules: BTreeMap<String, PathBuf> =
        files.into_iter().filter_map(|file| Some((module_of(src, &file)?, file))).collect();
    let mut graph = ModuleGraph::new();
    for (module, file) in &modules {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let deps = dependencies(module, &code_of(&text), &modules);
        graph.insert(module.clone(), deps);
    }
    Ok(graph)
}

/// The cycles of `graph`: each a sorted list of modules (strongly connected components with more
/// than one module, or a module naming itself through `crate::`).
pub(crate) fn cycles(graph: &ModuleGraph) -> Vec<Vec<String>> {
    let mut finder = Tarjan {
        graph,
        next: 0,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for module in graph.keys() {
        if !finder.index.contains_key(module.as_str()) {
            finder.visit(module);
        }
    }
    finder.found
}

/// Every crate's `src/` in the workspace: `crates/*/src`, `bench/src`, `xtask/src`,
/// `examples/*/src`.
pub(crate) fn workspace_sources(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut sources = Vec::new();
    for parent in ["crates", "examples"] {
        let Ok(entries) = std::fs::read_dir(root.join(parent)) else { continue };
        for entry in entries {
            let src = entry?.path().join("src");
            if src.is_dir() {
                sources.push(src);
            }
        }
    }
    sources.extend(["bench/src", "xtask/src"].map(|dir| root.join(dir)));
    sources.sort();
    Ok(sources)
}

struct Tarjan<'g> {
    graph: &'g ModuleGraph,
    next: usize,
    index: BTreeMap<&'g str, usize>,
    low: BTreeMap<&'g str, usize>,
    stack: Vec<&'g str>,
    on_stack: BTreeSet<&'g str>,
    found: Vec<Vec<String>>,
}

impl<'g> Tarjan<'g> {
    fn visit(&mut self, module: &'g str) {
        self.index.insert(module, self.next);
        self.low.insert(module, self.next);
        self.next += 1;
        self.stack.push(module);
        self.on_stack.insert(module);
        for dep in self.graph.get(module).into_iter().flatten() {
            let dep = dep.as_str();
            if !self.index.contains_key(dep) {
                self.visit(dep);
                let low = self.low[module].min(self.low[dep]);
                self.low.insert(module, low);
            } else if self.on_stack.contains(dep) {
                let low = self.low[module].min(self.index[dep]);
                self.low.insert(module, low);
            }
        }
        if self.low[module] == self.index[module] {
            self.pop_component(module);
        }
    }

    fn pop_component(&mut self, root: &'g str) {
        let mut component = Vec::new();
        while let Some(member) = self.stack.pop() {
            self.on_stack.remove(member);
            component.push(member.to_owned());
            if member == root {
                break;
            }
        }
        let names_itself = self.graph.get(root).is_some_and(|deps| deps.contains(root));
        if component.len() > 1 || names_itself {
            component.sort();
            self.found.push(component);
        }
    }
}

fn collect_rs(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_rs(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    Ok(())
}

/// `src/a/b.rs` → `a::b`; `src/a/mod.rs` → `a`; `src/lib.rs`, `src/main.rs` → the root; binaries
/// under `src/bin/` are crates of their own and are left out.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> =
        relative.iter().map(|part| part.to_string_lossy().into_owned()).collect();
    if parts.first().is_some_and(|first| first == "bin") {
        return None;
    }
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    let at_root = parts.is_empty() && (stem == "lib" || stem == "main");
    if stem != "mod" && !at_root {
        parts.push(stem.to_owned());
    }
    Some(parts.join("::"))
}

/// The file's code: lines before the first `#[cfg(test)]`, without `//` comments.
fn code_of(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules `module`'s `code` names through `crate::` or `super::` paths, including the
/// paths inside `use` groups (`use crate::{a::X, b::Y}`).
fn dependencies(module: &str, code: &str, modules: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let own: Vec<&str> = if module.is_empty() { Vec::new() } else { module.split("::").collect() };
    let mut deps = BTreeSet::new();
    for path in paths_in(code) {
        let Some(absolute) = absolute(&own, &path) else { continue };
        let target = (1..=absolute.len())
            .rev()
            .map(|n| absolute[..n].join("::"))
            .find(|candidate| modules.contains_key(candidate));
        if let Some(target) = target.filter(|t| t != module) {
            deps.insert(target);
        }
    }
    deps
}

/// Every path starting with `crate::` or `super::` in `code`, with `use` groups expanded
/// (`crate::{a::X, b::{Y, Z}}` gives `crate::a::X`, `crate::b::Y`, `crate::b::Z`).
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut paths = Vec::new();
    for start in ["crate::", "super::"].iter().flat_map(|prefix| starts_of(code, prefix)) {
        let before = start.checked_sub(1).map(|i| bytes[i]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
            continue;
        }
        expand_tree(&[], &code[start..], &mut paths);
    }
    paths
}

/// Expand the use tree at the start of `text` under `prefix` into `paths`.
fn expand_tree(prefix: &[String], text: &str, paths: &mut Vec<Vec<String>>) {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(text.len());
    let mut path = prefix.to_vec();
    path.extend(text[..end].split("::").filter(|s| !s.is_empty()).map(str::to_owned));
    let Some(group) = text[end..].strip_prefix('{') else {
        paths.push(path);
        return;
    };
    for item in top_level_items(group) {
        expand_tree(&path, item.trim(), paths);
    }
}

/// The comma-separated items of a brace group whose opening brace is already consumed, up to
/// its closing brace.
fn top_level_items(group: &str) -> Vec<&str> {
    let (mut depth, mut from, mut items) = (0usize, 0usize, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[from..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    items.push(&group[from..]);
    items
}

fn starts_of<'a>(code: &'a str, prefix: &'a str) -> impl Iterator<Item = usize> + 'a {
    code.match_indices(prefix).map(|(i, _)| i)
}

/// `crate::a::b` → `[a, b]`; `super::x` from `m::n` → `[m, x]`; `None` past the root.
fn absolute(own: &[&str], path: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = own.iter().map(|s| (*s).to_owned()).collect();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    base.extend(rest.iter().filter(|s| *s != "self").cloned());
    Some(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph_of(files: &[(&str, &str)]) -> ModuleGraph {
        let modules: BTreeMap<String, PathBuf> =
            files.iter().map(|(m, _)| ((*m).to_owned(), PathBuf::new())).collect();
        files
            .iter()
            .map(|(m, code)| ((*m).to_owned(), dependencies(m, &code_of(code), &modules)))
            .collect()
    }

    #[test]
    fn finds_a_circle_through_crate_super_and_use_groups() {
        let graph = graph_of(&[
            ("", "pub mod a; pub mod b; pub use a::X;"),
            ("a", "use crate::{x::{P, Q}, b::Y};\n"),
            ("x", ""),
            ("b", "fn f() -> super::c::Z { todo() }"),
            ("e", "use crate::{x::{P, Q}, c::W};"),
            ("c", "use crate::a::X; // crate::b is only a comment"),
            ("d", "use crate::a::X;\n#[cfg(test)]\nmod tests { use crate::d::D; }"),
        ]);
        assert_eq!(cycles(&graph), vec![vec!["a".to_owned(), "b".to_owned(), "c".to_owned()]]);
    }

    #[test]
    fn parents_re_exporting_children_and_root_paths_are_no_circle() {
        let graph = graph_of(&[
            ("", "pub use store::JobStore;"),
            ("store", "pub mod job; pub use job::JobStore;"),
            ("store::job", "use crate::JobStore; use super::super::page::Page;"),
            ("page", ""),
        ]);
        assert!(cycles(&graph).is_empty(), "{graph:?}");
        assert!(graph["store::job"].contains("page"));
    }

    /// The workspace itself: no crate has an import circle (ARCHITECTURE.md's rule).
    #[test]
    fn no_crate_of_the_workspace_has_an_import_circle() -> anyhow::Result<()> {
        let root = crate::workspace_root();
        let mut found = Vec::new();
        for src in workspace_sources(&root)? {
            for cycle in cycles(&crate_graph(&src)?) {
                found.push(format!("{}: {}", src.display(), cycle.join(" <-> ")));
            }
        }
        assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
        Ok(())
    }
}
