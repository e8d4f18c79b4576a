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

#[test]
fn dependencies_point_one_way_and_modules_stay_small() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut back = BTreeSet::new();
    let mut big = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(f).unwrap();
        let code = text.split("\n#[cfg(test)]").next().unwrap_or("");
        if code.lines().count() > MAX_LINES {
            big.push(format!("{rel}: {} lines of code", code.lines().count()));
        }
        let own = rel.split('/').next().unwrap();
        let Some(mine) = layer(own) else {
            continue; // the crate root may use everything
        };
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
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
        "these back edges are cut: delete them from KNOWN in tests/layout.rs: {gone:?}"
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
