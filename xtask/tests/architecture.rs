//! The module structure ARCHITECTURE.md describes: modules form layers, and no module reaches
//! back up to one that depends on it. Read from the source (`crate::` paths outside tests),
//! with each file below `src/<module>/` counted as part of `<module>`.

mod common;

use std::collections::{BTreeMap, BTreeSet};

/// Every module's `crate::` uses outside its tests: module -> (used module -> example path).
fn uses() -> BTreeMap<String, BTreeMap<String, String>> {
    let src = common::repo_root().join("xtask/src");
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for entry in walkdir::WalkDir::new(&src) {
        let entry = entry.unwrap();
        if entry.path().extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = entry.path().strip_prefix(&src).unwrap().to_str().unwrap().to_string();
        let module = relative.split(['/', '.']).next().unwrap().to_string();
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let code: String = code
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .map(|l| format!("{l}\n"))
            .collect();
        let edges = graph.entry(module.clone()).or_default();
        for used in crate_paths(&code) {
            if used != module {
                edges.entry(used).or_insert_with(|| relative.clone());
            }
        }
    }
    graph
}

/// The first segment after each `crate::`, including every item of `crate::{a, b::c}`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The items at the group's top level.
            let (mut depth, mut start) = (0, 0);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.insert(ident(group[start..].trim_start()));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident(group[start..].trim_start()));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

/// The modules in a cycle with `start`, found by walking the graph.
fn reaches(graph: &BTreeMap<String, BTreeMap<String, String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(module) = stack.pop() {
        if module == to {
            return true;
        }
        if seen.insert(module.clone()) {
            stack.extend(graph.get(&module).into_iter().flat_map(|e| e.keys().cloned()));
        }
    }
    false
}

#[test]
fn modules_have_no_import_cycles() {
    let graph = uses();
    assert!(graph.contains_key("cluster") && graph.contains_key("main"), "{graph:?}");
    let mut cycles = Vec::new();
    for (module, edges) in &graph {
        for (used, file) in edges {
            if reaches(&graph, used, module) {
                cycles.push(format!("{module} -> {used} (in {file}) and back"));
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles between modules:\n{}", cycles.join("\n"));
}

/// The rows of ARCHITECTURE.md's `## Layers` block, top first: the module names of each.
fn layers() -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(common::repo_root().join("ARCHITECTURE.md")).unwrap();
    let section = text.split("\n## Layers\n").nth(1).expect("ARCHITECTURE.md has ## Layers");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter_map(|l| l.strip_prefix("    "))
        .map(|row| {
            let modules = row.split('(').next().unwrap();
            modules.split(',').map(|m| m.trim().to_string()).filter(|m| !m.is_empty()).collect()
        })
        .collect()
}

#[test]
fn modules_use_only_the_layers_below_their_own() {
    let (graph, layers) = (uses(), layers());
    let row_of = |module: &str| layers.iter().position(|row| row.iter().any(|m| m == module));
    let mut wrong = Vec::new();
    for (module, edges) in &graph {
        let Some(row) = row_of(module) else {
            wrong.push(format!("{module} is in no row of ARCHITECTURE.md's layers"));
            continue;
        };
        for (used, file) in edges {
            match row_of(used) {
                Some(below) if below > row => {}
                Some(_) => wrong.push(format!("{module} uses {used} (in {file}), not below it")),
                None => wrong.push(format!("{used} is in no row of ARCHITECTURE.md's layers")),
            }
        }
    }
    for row in &layers {
        for module in row {
            if !graph.contains_key(module) {
                wrong.push(format!("ARCHITECTURE.md's layers name {module}, which is no module"));
            }
        }
    }
    assert!(wrong.is_empty(), "the layers of ARCHITECTURE.md:\n{}", wrong.join("\n"));
}

/// Suites are data: the code names no suite, service or image (the words of this repository's
/// suites), but for the `e2e-gateway` task, kept as it was documented before suites.
#[test]
fn no_suite_or_service_is_named_in_the_code() {
    let src = common::repo_root().join("xtask/src");
    let mut named = Vec::new();
    for entry in walkdir::WalkDir::new(&src) {
        let entry = entry.unwrap();
        if entry.path().extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = entry.path().strip_prefix(&src).unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (n, line) in code.lines().enumerate() {
            let alias = line.contains("e2e-gateway")
                || relative == "flags.rs" && line.contains("e2e gateway");
            let names = ["gateway", "datastorage", "redis"];
            if !alias && names.iter().any(|name| line.contains(name)) {
                named.push(format!("{relative}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        named.is_empty(),
        "suites and services belong in test/e2e/*/suite.toml:\n{}",
        named.join("\n")
    );
}

#[test]
fn the_reader_finds_grouped_and_plain_uses() {
    let code = "use crate::{\n    a::{self, B},\n    c, d::e,\n};\nfn f() { crate::g::h(); }\n";
    let found: Vec<String> = crate_paths(code).into_iter().collect();
    assert_eq!(found, ["a", "c", "d", "g"]);
}
