//! Windows paths on a mounted volume: case-insensitive resolution and
//! globbing, the way Windows itself sees names (XP wrote
//! `WINDOWS\system32`, later versions `Windows\System32`).
//!
//! Linux's ntfs3 compares names with case, so `windows\SYSTEM32` must be
//! found by listing directories. Two entries that differ only in case (NTFS
//! can hold them when written from Linux or POSIX subsystems) are an
//! ambiguity: reported as an error, never resolved silently.
//!
//! Globs are `*` and `?` within one component; no `**`, no character
//! classes. This is not a general glob library.
//!
//! Nothing here follows a link: a symlink, or an NTFS junction or other
//! name-surrogate reparse point (ntfs3 shows them as symlinks), met while
//! resolving is an error naming it. A victim's volume is hostile input; a
//! link planted in it must not lead the engine to files off the volume.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Case-insensitive comparison of names (Unicode simple lowercase; NTFS
/// uses its `$UpCase` table, which agrees for the names playbooks use).
pub fn name_eq(a: &str, b: &str) -> bool {
    a == b || a.to_lowercase() == b.to_lowercase()
}

/// Matches one name against a pattern with `*` and `?`, ignoring case.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let n: Vec<char> = name.to_lowercase().chars().collect();
    // Iterative wildcard match with backtracking to the last '*'.
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

fn has_wildcard(c: &str) -> bool {
    c.contains(['*', '?'])
}

/// Names in `dir`, sorted. A missing directory is empty.
fn entries(dir: &Path) -> Result<Vec<String>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut v = Vec::new();
    for e in rd {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        v.push(e.file_name().to_string_lossy().into_owned());
    }
    v.sort();
    Ok(v)
}

/// The one entry of `dir` named `name` without regard to case.
pub fn child(dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    let all = entries(dir)?;
    let hits: Vec<&String> = all.iter().filter(|e| name_eq(e, name)).collect();
    match hits.as_slice() {
        [] => Ok(None),
        [one] => {
            let p = dir.join(one);
            crate::journal::no_link(&p)?;
            Ok(Some(p))
        }
        many => bail!(
            "{}: entries differ only in case ({}); refusing to guess",
            dir.display(),
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Resolves relative components under `root` without regard to case.
pub fn resolve(root: &Path, parts: &[String]) -> Result<Option<PathBuf>> {
    let mut cur = root.to_path_buf();
    for p in parts {
        match child(&cur, p)? {
            Some(next) => cur = next,
            None => return Ok(None),
        }
    }
    Ok(Some(cur))
}

/// Every existing path under `root` matching the components (wildcards per
/// component), sorted.
pub fn glob(root: &Path, parts: &[String]) -> Result<Vec<PathBuf>> {
    let mut current = vec![root.to_path_buf()];
    for p in parts {
        let mut next = Vec::new();
        for dir in &current {
            if has_wildcard(p) {
                for e in entries(dir)? {
                    if glob_match(p, &e) {
                        let m = dir.join(e);
                        crate::journal::no_link(&m)?;
                        next.push(m);
                    }
                }
            } else if let Some(c) = child(dir, p)? {
                next.push(c);
            }
        }
        current = next;
        if current.is_empty() {
            break;
        }
    }
    current.sort();
    Ok(current)
}

/// `root/a/b` -> `a\b`, for reports and journals.
pub fn display_rel(root: &Path, p: &Path) -> String {
    let rel = p.strip_prefix(root).unwrap_or(p);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("\\")
}

/// Like [`resolve`], but where a component is absent keeps the playbook's
/// spelling for it and everything after: the path a new file should get.
pub fn resolve_for_create(root: &Path, parts: &[String]) -> Result<PathBuf> {
    let mut cur = root.to_path_buf();
    let mut i = 0;
    while i < parts.len() {
        match child(&cur, &parts[i])? {
            Some(next) => cur = next,
            None => break,
        }
        i += 1;
    }
    for p in &parts[i..] {
        cur = cur.join(p);
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(s: &str) -> Vec<String> {
        crate::playbook::split_path(s).unwrap()
    }

    #[test]
    fn globbing() {
        assert!(glob_match(
            "C-00000291*.sys",
            "c-00000291-00000000-00000032.SYS"
        ));
        assert!(glob_match("avv*.dat", "AVVSCAN.DAT"));
        assert!(!glob_match("avv*.dat", "avvscan.dat.bak"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*x*y", "axxbxy"));
    }

    #[test]
    fn resolves_xp_casing() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("WINDOWS/system32/config")).unwrap();
        std::fs::write(d.path().join("WINDOWS/system32/config/SOFTWARE"), b"x").unwrap();
        let p = resolve(d.path(), &parts(r"Windows\System32\config\software"))
            .unwrap()
            .unwrap();
        assert_eq!(p, d.path().join("WINDOWS/system32/config/SOFTWARE"));
        assert!(resolve(d.path(), &parts(r"Windows\System32\nothere.exe"))
            .unwrap()
            .is_none());
        assert_eq!(
            display_rel(d.path(), &p),
            r"WINDOWS\system32\config\SOFTWARE"
        );
        let n = resolve_for_create(d.path(), &parts(r"Windows\System32\svchost.exe")).unwrap();
        assert_eq!(n, d.path().join("WINDOWS/system32/svchost.exe"));
    }

    #[test]
    fn case_twins_are_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("Windows")).unwrap();
        std::fs::create_dir_all(d.path().join("WINDOWS")).unwrap();
        let e = resolve(d.path(), &parts(r"windows\x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("refusing to guess"), "{e}");
    }

    #[test]
    fn links_are_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("host");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("avvscan.dat"), b"host file").unwrap();
        let root = d.path().join("vol");
        std::fs::create_dir_all(root.join("Program Files/Common Files")).unwrap();
        // A folder of the volume that is really a link off it.
        std::os::unix::fs::symlink(&outside, root.join("Program Files/Common Files/McAfee"))
            .unwrap();
        let e = glob(&root, &parts(r"Program Files\Common Files\McAfee\*.dat"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a link"), "{e}");
        let e = resolve(
            &root,
            &parts(r"program files\common files\mcafee\avvscan.dat"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("never follows links"), "{e}");
        // A linked file matched by a wildcard is refused too.
        std::fs::create_dir_all(root.join("x")).unwrap();
        std::os::unix::fs::symlink(outside.join("avvscan.dat"), root.join("x/a.dat")).unwrap();
        assert!(glob(&root, &parts(r"x\*.dat")).is_err());
        assert_eq!(
            std::fs::read(outside.join("avvscan.dat")).unwrap(),
            b"host file"
        );
    }

    #[test]
    fn glob_over_directories() {
        let d = tempfile::tempdir().unwrap();
        let cs = d.path().join("Windows/System32/drivers/CrowdStrike");
        std::fs::create_dir_all(&cs).unwrap();
        for f in ["C-00000291-1.sys", "c-00000291-2.SYS", "C-00000285-1.sys"] {
            std::fs::write(cs.join(f), b"x").unwrap();
        }
        let got = glob(
            d.path(),
            &parts(r"WINDOWS\system32\DRIVERS\crowdstrike\C-00000291*.sys"),
        )
        .unwrap();
        let names: Vec<_> = got
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["C-00000291-1.sys", "c-00000291-2.SYS"]);
        assert!(glob(d.path(), &parts(r"nothere\*.sys")).unwrap().is_empty());
    }
}
