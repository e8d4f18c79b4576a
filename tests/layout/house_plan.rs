//! The house plan, checked: `agent/src/` is one folder per subsystem, and dependencies point one
//! way, `http -> hooks -> clone -> supervise -> sys` (with `config` beside `sys`, at the bottom).
//! The test reads every `crate::` path in the agent's sources and fails on one that points back
//! up, unless it is in [`KNOWN`]: the back edges still to be cut, each with the cut that removes
//! it. That list may only shrink; an entry that no longer matches fails the test too, so a cut
//! that lands must also delete its entry. And no module grows past [`MAX_LINES`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layers, lowest first. The crate root (`lib.rs`, `main.rs`, `cli.rs`) is above them all.
const LAYERS: [&[&str]; 5] = [
    &["sys", "config"],
    &["supervise"],
    &["clone"],
    &["hooks"],
    &["http"],
];

/// Back edges that exist today, as (file, layer it reaches up to, why, and the cut).
const KNOWN: [(&str, &str, &str); 0] = [];

/// A module past this many lines of code (the unit tests beside it not counted) has grown a
/// second responsibility: split it (as the acting hooks, the supervisor's after-exit logic, the
/// `[notify]`/`[[secret]]` parsers and the routine's error type were).
const MAX_LINES: usize = 400;

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every source file of the agent as (its path below `src/`, its code without the unit tests).
fn agent_sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    sources(&root, &mut paths);
    paths
        .iter()
        .map(|f| {
            let rel = f
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(f).unwrap();
            let code = text.split("\n#[cfg(test)]").next().unwrap_or("");
            (rel, code.to_string())
        })
        .collect()
}

#[test]
fn dependencies_point_one_way_and_modules_stay_small() {
    let mut back = BTreeSet::new();
    let mut big = Vec::new();
    for (rel, code) in &agent_sources() {
        if code.lines().count() > MAX_LINES {
            big.push(format!("{rel}: {} lines of code", code.lines().count()));
        }
        let own = rel.split('/').next().unwrap();
        let Some(mine) = layer(own) else {
            continue; // the crate root may use everything
        };
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let target: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let Some(theirs) = layer(&target) else {
                assert!(
                    ["lock"].contains(&target.as_str()) || target.is_empty(),
                    "{rel}: crate::{target} is not a subsystem (move it into one)"
                );
                continue;
            };
            if theirs > mine {
                back.insert((rel.clone(), target));
            }
        }
    }
    let known: BTreeSet<(String, String)> = KNOWN
        .iter()
        .map(|(f, t, _)| (f.to_string(), t.to_string()))
        .collect();
    let new: Vec<_> = back.difference(&known).collect();
    assert!(
        new.is_empty(),
        "dependencies that point back up the layers (http -> hooks -> clone -> supervise -> sys): {new:?}"
    );
    let gone: Vec<_> = known.difference(&back).collect();
    assert!(
        gone.is_empty(),
        "these back edges are cut: delete them from KNOWN in tests/layout/house_plan.rs: {gone:?}"
    );
    assert!(big.is_empty(), "modules over {MAX_LINES} lines: {big:?}");
    for (f, t, why) in KNOWN {
        eprintln!("known back edge, still to cut: {f} -> {t}: {why}");
    }
}

/// The test of the test: a source that reaches up is caught.
#[test]
fn a_dependency_that_points_back_is_caught() {
    assert!(layer("sys") < layer("http"));
    let text = "use crate::http::routes::json;";
    let target: String = text["use crate::".len()..]
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    assert_eq!(target, "http");
    assert!(
        layer(&target) > layer("clone"),
        "clone -> http would be a back edge"
    );
}

/// The modules of `agent/src` and the module-to-module edges their sources name (`crate::a::b`,
/// `super::x`), each path resolved to the deepest module file it reaches. A module and its own
/// parent always name each other (the parent declares the child, the child uses the parent's
/// types): those edges are not counted.
fn module_edges(files: &[(String, String)]) -> BTreeSet<(String, String)> {
    let module_of = |rel: &str| -> Vec<String> {
        let mut parts: Vec<String> = rel
            .trim_end_matches(".rs")
            .split('/')
            .map(String::from)
            .collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        parts
    };
    let by_path: std::collections::BTreeMap<Vec<String>, String> = files
        .iter()
        .map(|(rel, _)| (module_of(rel), rel.clone()))
        .collect();
    let resolve = |path: Vec<String>| -> Option<String> {
        (1..=path.len())
            .rev()
            .find_map(|n| by_path.get(&path[..n]).cloned())
    };
    let idents = |rest: &str| -> Vec<String> {
        let mut out = Vec::new();
        let mut s = rest;
        loop {
            let id: String = s
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if id.is_empty() {
                break;
            }
            s = &s[id.len()..];
            out.push(id);
            match s.strip_prefix("::") {
                Some(r) => s = r,
                None => break,
            }
        }
        out
    };
    let parent =
        |rel: &str| resolve(module_of(rel)[..module_of(rel).len().saturating_sub(1)].to_vec());
    let mut edges = BTreeSet::new();
    for (rel, code) in files {
        let me = module_of(rel);
        let mut targets = Vec::new();
        for (i, _) in code.match_indices("crate::") {
            targets.push(idents(&code[i + "crate::".len()..]));
        }
        for (i, _) in code.match_indices("super::") {
            let mut path = me[..me.len().saturating_sub(1)].to_vec();
            path.extend(idents(&code[i + "super::".len()..]));
            targets.push(path);
        }
        for t in targets {
            let Some(target) = resolve(t) else { continue };
            if &target == rel
                || parent(rel).as_deref() == Some(target.as_str())
                || parent(&target).as_deref() == Some(rel.as_str())
            {
                continue;
            }
            edges.insert((rel.clone(), target));
        }
    }
    edges
}

/// The modules that depend on one another in a circle (each group's files).
fn circles(edges: &BTreeSet<(String, String)>) -> Vec<BTreeSet<String>> {
    let reach = |from: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(n) = todo.pop() {
            for (a, b) in edges {
                if *a == n && seen.insert(b.clone()) {
                    todo.push(b.clone());
                }
            }
        }
        seen
    };
    let nodes: BTreeSet<&String> = edges.iter().flat_map(|(a, b)| [a, b]).collect();
    let mut groups: Vec<BTreeSet<String>> = Vec::new();
    for n in nodes {
        let from_n = reach(n);
        if !from_n.contains(n) || groups.iter().any(|g| g.contains(n)) {
            continue;
        }
        let group: BTreeSet<String> = from_n
            .iter()
            .filter(|m| reach(m).contains(n))
            .cloned()
            .collect();
        groups.push(group);
    }
    groups
}

/// Within a layer too, dependencies point one way: no two modules need each other, directly or
/// round a circle (#33: the request extensions lived in the accept loop, which the routes and
/// layers it calls then needed; the helper runner and the launcher needed each other).
#[test]
fn no_module_depends_on_itself_round_a_circle() {
    let files = agent_sources();
    let found = circles(&module_edges(&files));
    assert!(found.is_empty(), "modules in a circle: {found:?}");
}

/// The test of the test: two modules that use each other are found, a parent and its child are
/// not a circle.
#[test]
fn a_circle_between_two_modules_is_caught() {
    let files = vec![
        (
            "http/mod.rs".to_string(),
            "pub mod accept; pub mod routes; use crate::http::accept::x;".to_string(),
        ),
        (
            "http/accept.rs".to_string(),
            "use crate::http::routes::router; use super::X;".to_string(),
        ),
        (
            "http/routes.rs".to_string(),
            "use crate::http::accept::Conn;".to_string(),
        ),
        (
            "sys/clock.rs".to_string(),
            "use crate::http::routes::json;".to_string(),
        ),
    ];
    let found = circles(&module_edges(&files));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0],
        BTreeSet::from(["http/accept.rs".to_string(), "http/routes.rs".to_string()])
    );
}

/// Problems in the test tree's plan: a file included by path from outside its own folder (what
/// the tiers share is the `mva-test-support` crate, compiled once, not a file compiled into
/// every test binary), or a port handed out after it was released (the race `support::ports`
/// exists to remove).
fn test_tree_problems(files: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (rel, text) in files {
        for line in text.lines() {
            let line = line.trim();
            if let Some(path) = line.strip_prefix("#[path = \"") {
                if path.starts_with("..") || path.contains("support") || path.contains("common") {
                    found.push(format!("{rel}: includes {line}"));
                }
            }
            if line.contains("fn free_port") {
                found.push(format!("{rel}: {line}"));
            }
        }
    }
    found
}

#[test]
fn the_test_tiers_share_one_crate_and_no_released_port() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests");
    let mut paths = Vec::new();
    sources(&root, &mut paths);
    paths.retain(|p| !p.ends_with("layout/house_plan.rs")); // the checker names what it looks for
    assert!(paths.len() > 20, "{paths:?}");
    let files: Vec<(String, String)> = paths
        .iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (rel, std::fs::read_to_string(p).unwrap())
        })
        .collect();
    let found = test_tree_problems(&files);
    assert!(found.is_empty(), "{found:#?}");
}

/// The test of the test: what the tree looked like before the support crate is caught.
#[test]
fn an_included_helper_file_and_a_released_port_are_caught() {
    let files = vec![(
        "hooks.rs".to_string(),
        "#[path = \"common/mod.rs\"]\nmod common;\npub fn free_port() -> u16 {\n".to_string(),
    )];
    assert_eq!(test_tree_problems(&files).len(), 2);
}
