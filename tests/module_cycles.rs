//! No module of `src/` uses a module that uses it back, directly or through
//! others: the layering `docs/architecture.md` draws. A module may use its own
//! ancestors (a part of `shared/` uses `shared`'s types); that is not a cycle.
//! Read from the source as text: each `crate::…` and `super::…` path outside
//! comments and `#[cfg(test)]` code names the module it reaches.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// Every `.rs` file under `dir`, with its module path.
fn modules(src: &Path, dir: &Path, found: &mut BTreeMap<Module, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            modules(src, &path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            let relative = path.strip_prefix(src).unwrap().with_extension("");
            let mut module: Module = relative
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                module.pop();
            }
            found.insert(module, std::fs::read_to_string(&path).unwrap());
        }
    }
}

/// The paths after `crate::` and `super::` in `line`, as segments, with the
/// names of a `{…}` group each as a path of their own.
fn paths(line: &str) -> Vec<(bool, Vec<String>)> {
    let mut found = Vec::new();
    for (start, _) in line
        .match_indices("crate::")
        .chain(line.match_indices("super::"))
    {
        let before = line[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let from_crate = line[start..].starts_with("crate::");
        let mut rest = &line[start..];
        let mut segments = Vec::new();
        loop {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            segments.push(rest[..end].to_owned());
            rest = &rest[end..];
            if let Some(after) = rest.strip_prefix("::") {
                if let Some(group) = after.strip_prefix('{') {
                    let group = &group[..group.find('}').unwrap_or(group.len())];
                    for name in group.split(',') {
                        let name = name.trim().split("::").next().unwrap_or("");
                        let mut path = segments.clone();
                        path.push(name.to_owned());
                        found.push((from_crate, path));
                    }
                    break;
                }
                rest = after;
            } else {
                found.push((from_crate, segments));
                break;
            }
        }
    }
    found
}

/// The modules each module uses, ancestors and itself left out.
fn uses(modules: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut graph = BTreeMap::new();
    for (module, text) in modules {
        let mut used = BTreeSet::new();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for line in code.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
            for (from_crate, path) in paths(line) {
                let mut target: Module = if from_crate {
                    Vec::new()
                } else {
                    module[..module.len().saturating_sub(1)].to_vec()
                };
                let mut rest = path.into_iter().skip(1).peekable();
                while rest.peek().is_some_and(|s| s == "super") {
                    target.pop();
                    rest.next();
                }
                target.extend(rest);
                // The longest prefix that is a module is the one reached.
                while !target.is_empty() && !modules.contains_key(&target) {
                    target.pop();
                }
                if !target.is_empty() && !module.starts_with(&target) {
                    used.insert(target);
                }
            }
        }
        graph.insert(module.clone(), used);
    }
    graph
}

/// A cycle through `start`, if there is one.
fn cycle_through(
    graph: &BTreeMap<Module, BTreeSet<Module>>,
    start: &Module,
) -> Option<Vec<Module>> {
    let mut stack = vec![(start.clone(), vec![start.clone()])];
    let mut seen = BTreeSet::new();
    while let Some((module, trail)) = stack.pop() {
        for next in graph.get(&module).into_iter().flatten() {
            if next == start {
                return Some(trail.clone());
            }
            if seen.insert(next.clone()) {
                let mut longer = trail.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

#[test]
fn no_module_uses_one_that_uses_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = BTreeMap::new();
    modules(&src, &src, &mut found);
    let graph = uses(&found);
    assert!(graph.len() > 40, "only {} modules found", graph.len());
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|module| cycle_through(&graph, module))
        .map(|trail| {
            let names: Vec<String> = trail.iter().map(|m| m.join("::")).collect();
            names.join(" -> ")
        })
        .collect();
    assert!(cycles.is_empty(), "module cycles: {cycles:#?}");
}

#[test]
fn the_reader_finds_a_cycle_when_there_is_one() {
    let module = |path: &str| -> Module { path.split("::").map(str::to_owned).collect() };
    let sources = BTreeMap::from([
        (module("a"), "use crate::b::Thing;\n".to_owned()),
        (
            module("b"),
            "use super::a::{One, two::Two};\n// crate::c\n".to_owned(),
        ),
        (
            module("c"),
            "use crate::a;\n#[cfg(test)]\nuse crate::c;".to_owned(),
        ),
        (
            module("c::d"),
            "use super::Parent;\nuse crate::a::X;".to_owned(),
        ),
    ]);
    let graph = uses(&sources);
    assert_eq!(graph[&module("a")], BTreeSet::from([module("b")]));
    assert_eq!(graph[&module("b")], BTreeSet::from([module("a")]));
    assert_eq!(graph[&module("c")], BTreeSet::from([module("a")]));
    assert_eq!(graph[&module("c::d")], BTreeSet::from([module("a")]));
    assert!(cycle_through(&graph, &module("a")).is_some());
    assert!(cycle_through(&graph, &module("c")).is_none());
}
