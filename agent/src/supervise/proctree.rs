//! The processes below the agent, read from `/proc`, for the last steps of a stop: the app's
//! process group is signalled as a group, and descendants that left it (a daemon that called
//! `setsid`) are found here and signalled one by one.

use std::fs;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
}

fn parse_stat(stat: &str) -> Option<Proc> {
    // "pid (comm) state ppid pgrp ...": comm may contain spaces and parentheses.
    let (head, rest) = stat.rsplit_once(')')?;
    let pid = head.split_whitespace().next()?.parse().ok()?;
    let mut f = rest.split_whitespace();
    let _state = f.next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some(Proc { pid, ppid, pgrp })
}

fn all() -> Vec<Proc> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?))
        .collect()
}

/// Every live descendant of `root`: through the kernel's `children` lists when it has them
/// (CONFIG_PROC_CHILDREN: only our own tree is read), else by reading every process.
pub fn descendants(root: i32) -> Vec<Proc> {
    children_lists(root).unwrap_or_else(|| scan(root))
}

fn read_proc(pid: i32) -> Option<Proc> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Walks `/proc/<pid>/task/<tid>/children`; `None` when the kernel has no such files. Linear in
/// the processes found (a set, not a search of the list: 1,500 processes were 2 million
/// comparisons).
fn children_lists(root: i32) -> Option<Vec<Proc>> {
    let mut out: Vec<Proc> = Vec::new();
    let mut seen: std::collections::HashSet<i32> = std::collections::HashSet::new();
    let mut frontier = vec![root];
    let mut first = true;
    while let Some(parent) = frontier.pop() {
        let tasks = fs::read_dir(format!("/proc/{parent}/task"));
        let Ok(tasks) = tasks else { continue };
        for task in tasks.flatten() {
            let text = match fs::read_to_string(task.path().join("children")) {
                Ok(t) => t,
                Err(e) if first && e.kind() == std::io::ErrorKind::NotFound => return None,
                Err(_) => continue,
            };
            first = false;
            for pid in text
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                if seen.insert(pid) {
                    if let Some(p) = read_proc(pid) {
                        out.push(p);
                        frontier.push(pid);
                    }
                }
            }
        }
    }
    Some(out)
}

fn scan(root: i32) -> Vec<Proc> {
    let mut children: std::collections::HashMap<i32, Vec<Proc>> = Default::default();
    for p in all() {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut out: Vec<Proc> = Vec::new();
    let mut seen: std::collections::HashSet<i32> = std::collections::HashSet::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for p in children.get(&parent).into_iter().flatten() {
            if seen.insert(p.pid) {
                out.push(*p);
                frontier.push(p.pid);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines_with_awkward_names() {
        let p = parse_stat("42 (my (odd) name) S 7 42 42 0 -1").unwrap();
        assert_eq!(
            p,
            Proc {
                pid: 42,
                ppid: 7,
                pgrp: 42
            }
        );
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn finds_its_own_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        assert!(descendants(me).iter().any(|p| p.pid == child.id() as i32));
        assert!(
            scan(me).iter().any(|p| p.pid == child.id() as i32),
            "the fallback agrees"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
