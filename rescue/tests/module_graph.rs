//! The crate's shape, checked: the top-level modules of the rescue library
//! form no import cycle, and no host-safe module reaches into `pid1` (the
//! code that only makes sense as `/init`). Reads the sources as text: a
//! `crate::name` path, or a `use crate::{a, b}` group, is an edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Top-level module -> the top-level modules it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        // lib.rs and main.rs sit above the modules; `tests.rs` files are
        // test modules, which may use whatever they like.
        if top == "lib" || top == "main" || f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        // Test modules may use whatever they like.
        let text = text.split("#[cfg(test)]").next().unwrap();
        // Comments name modules without using them.
        let text: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let deps = g.entry(top.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                group
                    .split('}')
                    .next()
                    .unwrap()
                    .split(',')
                    .map(|s| s.trim().split("::").next().unwrap().trim())
                    .collect()
            } else {
                vec![rest
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap()]
            };
            for n in names {
                if !n.is_empty()
                    && n != top
                    && n.chars()
                        .all(|c| c.is_lowercase() || c == '_' || c.is_ascii_digit())
                {
                    deps.insert(n.to_string());
                }
            }
        }
    }
    g
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let g = graph();
    // Depth-first search with colours; report the first cycle found.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(1) => {
                let at = path.iter().position(|p| p == n).unwrap();
                let mut c = path[at..].to_vec();
                c.push(n.to_string());
                return Some(c);
            }
            Some(2) => return None,
            _ => {}
        }
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, g, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if let Some(c) = visit(n, &g, &mut state, &mut Vec::new()) {
            panic!("import cycle: {}", c.join(" -> "));
        }
    }
}

#[test]
fn host_safe_modules_do_not_use_pid1() {
    let g = graph();
    let offenders: Vec<&String> = g
        .iter()
        // `fuzzing` is the fuzz harness (never run by host or PID 1 code):
        // it must reach PID 1's network parsers to fuzz them.
        .filter(|(m, deps)| !matches!(m.as_str(), "pid1" | "fuzzing") && deps.contains("pid1"))
        .map(|(m, _)| m)
        .collect();
    assert!(offenders.is_empty(), "{offenders:?} use pid1");
    // The graph is not empty by accident (a broken reader would pass).
    assert!(
        g["repair"].contains("engine") && g["pid1"].contains("repair"),
        "{g:?}"
    );
}
