//! Incident playbooks: what a bad update did, how to recognise it on an
//! offline Windows volume, and what to do about it (docs/playbooks.md).
//!
//! This module is the data model and its validation. It does not touch a
//! volume: the engine evaluates playbooks against a Windows root.
//! Playbooks are untrusted input (an admin may write their own): parsing is
//! strict (`deny_unknown_fields`), errors carry the file and line, and
//! validation rejects anything the engine could misread.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The playbook format version this code reads.
pub const SCHEMA: u32 = 1;

/// One incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    pub schema: u32,
    /// Stable identifier, `[a-z0-9-]+`, e.g. `mcafee-dat-5958`.
    pub id: String,
    pub title: String,
    /// Day the bad update shipped, `YYYY-MM-DD`.
    pub date: String,
    /// Vendor advisories and articles.
    #[serde(default)]
    pub references: Vec<String>,
    /// What the technician reads on screen and in the report.
    #[serde(default)]
    pub summary: String,
    /// Which Windows installs it can apply to.
    #[serde(default)]
    pub applies: Applies,
    /// Conditions; all must hold for the actions to run.
    #[serde(default, rename = "when")]
    pub conditions: Vec<Condition>,
    /// Actions, in order.
    #[serde(default, rename = "action")]
    pub actions: Vec<Action>,
    /// Allow writing to a volume marked dirty (mounted with ntfs3 `force`).
    /// Off by default: a dirty volume is reported and left alone.
    #[serde(default)]
    pub allow_dirty: bool,
}

/// Windows versions a playbook applies to; absent fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Applies {
    /// Inclusive range of `CurrentBuild` (2600 = XP, 7601 = 7 SP1,
    /// 19045 = 10 22H2, 22631 = 11 23H2).
    pub min_build: Option<u32>,
    pub max_build: Option<u32>,
    /// Architectures: `x86`, `x64`, `arm64`.
    #[serde(default)]
    pub arch: Vec<Arch>,
    /// `CSDVersion` values, e.g. `Service Pack 3` (compared without case).
    #[serde(default)]
    pub service_pack: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    X86,
    X64,
    Arm64,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86 => "x86",
            Arch::X64 => "x64",
            Arch::Arm64 => "arm64",
        }
    }
}

/// One test of a file's content or metadata. Every field given must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTest {
    /// Any of these SHA-256 digests (lowercase hex).
    #[serde(default)]
    pub sha256: Vec<String>,
    /// The file starts with these bytes: hex, spaces allowed
    /// (`"AA AA AA AA 01 00 23 01"`).
    pub leading_bytes: Option<String>,
    /// Last write time at or after this instant (RFC 3339, UTC).
    pub mtime_from: Option<String>,
    /// Last write time strictly before this instant.
    pub mtime_before: Option<String>,
    /// Exact size in bytes.
    pub size: Option<u64>,
}

/// A condition. Paths are relative to the volume root, `\` or `/`
/// separated, matched without case; `*` and `?` glob within one component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Condition {
    /// Holds when at least one file matches `glob` and passes the tests:
    /// any of `match_any` (or any file when empty) and none of `except_any`.
    /// The matched files can be named by actions through `id`.
    Files {
        id: String,
        glob: String,
        #[serde(default)]
        match_any: Vec<FileTest>,
        #[serde(default)]
        except_any: Vec<FileTest>,
    },
    /// Holds when no file exists at `path` (the damage a deletion did).
    Missing { id: String, path: String },
    /// Holds when a registry value matches. `hive` is `SOFTWARE` or
    /// `SYSTEM` (from `Windows\System32\config`); `key` is below the hive
    /// root (`McAfee\AVEngine`). Strings compare without case; numbers by
    /// value (a REG_SZ holding digits compares as a number too).
    Registry {
        id: String,
        hive: Hive,
        key: String,
        value: String,
        /// Any of these values.
        #[serde(default)]
        equals: Vec<RegValue>,
        min: Option<u64>,
        max: Option<u64>,
    },
    /// Holds when an anti-virus quarantine holds a file whose original
    /// path matches `original` (a glob over the full Windows path, e.g.
    /// `*\system32\svchost.exe`).
    Quarantine {
        id: String,
        vendor: QuarantineVendor,
        original: String,
    },
}

impl Condition {
    pub fn id(&self) -> &str {
        match self {
            Condition::Files { id, .. }
            | Condition::Missing { id, .. }
            | Condition::Registry { id, .. }
            | Condition::Quarantine { id, .. } => id,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Hive {
    Software,
    System,
}

/// A registry value to compare with: a string or a number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RegValue {
    Number(u64),
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuarantineVendor {
    /// McAfee VirusScan `.bup`: an OLE compound file, streams XOR 0x6A,
    /// a `Details` INI stream with `OriginalName=`.
    McafeeBup,
}

/// Where a restore may take a good copy from, tried in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The McAfee quarantine on the victim (`.bup` files).
    McafeeQuarantine,
    /// `Windows\System32\dllcache` (Windows File Protection, XP/2003).
    Dllcache,
    /// `Windows\ServicePackFiles\i386` (XP/2003 service pack sources).
    ServicePackFiles,
    /// The component store `Windows\WinSxS` (Vista and later).
    Winsxs,
    /// defib's known-good store (`payloads/store`).
    Store,
}

/// An action. `id` lets a later action say `unless = "<id>"`: skip me when
/// that action changed something.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Action {
    /// Move the files a `files` condition matched into the run's vault.
    Neutralize {
        id: Option<String>,
        /// The `files` condition whose matches to move.
        files: String,
        unless: Option<String>,
    },
    /// Put a verified good copy at `path` when the file there is missing
    /// (or is one a `files` condition matched), from the first source that
    /// has one for this Windows build and architecture.
    Restore {
        id: Option<String>,
        path: String,
        sources: Vec<Source>,
        unless: Option<String>,
    },
    /// Place a file from the known-good store at `path`. `name` is the
    /// store entry's name (e.g. an operator-supplied `EXTRA.DAT`).
    /// With `optional`, an absent store entry is reported, not an error.
    DropIn {
        id: Option<String>,
        path: String,
        name: String,
        #[serde(default)]
        optional: bool,
        unless: Option<String>,
    },
}

impl Action {
    pub fn id(&self) -> Option<&str> {
        match self {
            Action::Neutralize { id, .. }
            | Action::Restore { id, .. }
            | Action::DropIn { id, .. } => id.as_deref(),
        }
    }

    pub fn unless(&self) -> Option<&str> {
        match self {
            Action::Neutralize { unless, .. }
            | Action::Restore { unless, .. }
            | Action::DropIn { unless, .. } => unless.as_deref(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Action::Neutralize { .. } => "neutralize",
            Action::Restore { .. } => "restore",
            Action::DropIn { .. } => "drop-in",
        }
    }
}

/// Parses hex with optional spaces (`"AA AA 01"`).
pub fn parse_hex(s: &str) -> Result<Vec<u8>> {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.is_empty() || !compact.len().is_multiple_of(2) {
        bail!("{s:?} is not an even number of hex digits");
    }
    (0..compact.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&compact[i..i + 2], 16).with_context(|| format!("{s:?} is not hex"))
        })
        .collect()
}

/// Parses an RFC 3339 instant to seconds since the epoch.
pub fn parse_instant(s: &str) -> Result<i64> {
    let t = humantime::parse_rfc3339(s)
        .with_context(|| format!("{s:?} is not an RFC 3339 time like 2024-07-19T04:09:00Z"))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0))
}

/// A Windows relative path as components, `\` or `/` separated. Rejects
/// absolute paths, drive letters and `..`: a playbook may not leave the
/// volume.
pub fn split_path(p: &str) -> Result<Vec<String>> {
    if p.contains(':') {
        bail!("{p:?}: drive letters and streams are not allowed; paths are relative to the volume root");
    }
    if p.starts_with(['\\', '/']) {
        bail!("{p:?}: paths are relative to the volume root; drop the leading separator");
    }
    let parts: Vec<String> = p
        .split(['\\', '/'])
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .collect();
    if parts.is_empty() {
        bail!("empty path");
    }
    if parts.iter().any(|c| c == "..") {
        bail!("{p:?}: '..' is not allowed");
    }
    Ok(parts)
}

impl Playbook {
    /// Parses and validates one playbook; `origin` names it in errors.
    /// TOML errors carry line and column.
    pub fn parse(text: &str, origin: &str) -> Result<Playbook> {
        let pb: Playbook = toml::from_str(text).map_err(|e| {
            let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            anyhow::anyhow!("{origin}:{line}:{col}: {}", e.message())
        })?;
        pb.validate()
            .with_context(|| format!("{origin}: invalid playbook"))?;
        Ok(pb)
    }

    /// Checks what serde cannot: ids, references between conditions and
    /// actions, paths, hex, times.
    pub fn validate(&self) -> Result<()> {
        if self.schema != SCHEMA {
            bail!(
                "schema {} is not supported (this defib reads schema {SCHEMA})",
                self.schema
            );
        }
        let id_ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        };
        if !id_ok(&self.id) {
            bail!("id {:?}: use lowercase letters, digits and '-'", self.id);
        }
        if self.title.trim().is_empty() {
            bail!("title is empty");
        }
        if self.date.len() != 10 || parse_instant(&format!("{}T00:00:00Z", self.date)).is_err() {
            bail!("date {:?}: use YYYY-MM-DD", self.date);
        }
        if let (Some(a), Some(b)) = (self.applies.min_build, self.applies.max_build) {
            if a > b {
                bail!("applies: min_build {a} is above max_build {b}");
            }
        }
        if self.conditions.is_empty() {
            bail!("no [[when]] conditions: a playbook must say how to recognise the damage");
        }
        let mut cond_ids: Vec<&str> = Vec::new();
        for c in &self.conditions {
            let id = c.id();
            if !id_ok(id) {
                bail!("condition id {id:?}: use lowercase letters, digits and '-'");
            }
            if cond_ids.contains(&id) {
                bail!("condition id {id:?} is used twice");
            }
            cond_ids.push(id);
            match c {
                Condition::Files {
                    glob,
                    match_any,
                    except_any,
                    ..
                } => {
                    split_path(glob).with_context(|| format!("condition {id}: glob"))?;
                    for t in match_any.iter().chain(except_any) {
                        t.validate().with_context(|| format!("condition {id}"))?;
                    }
                }
                Condition::Missing { path, .. } => {
                    let parts =
                        split_path(path).with_context(|| format!("condition {id}: path"))?;
                    if parts.iter().any(|p| p.contains(['*', '?'])) {
                        bail!("condition {id}: a missing-file path cannot have wildcards");
                    }
                }
                Condition::Registry {
                    key,
                    value,
                    equals,
                    min,
                    max,
                    ..
                } => {
                    if key.trim().is_empty()
                        || value.is_empty() && equals.is_empty() && min.is_none() && max.is_none()
                    {
                        bail!("condition {id}: registry needs a key, a value and equals/min/max");
                    }
                    if equals.is_empty() && min.is_none() && max.is_none() {
                        bail!("condition {id}: registry needs equals, min or max");
                    }
                }
                Condition::Quarantine { original, .. } => {
                    if original.trim().is_empty() {
                        bail!("condition {id}: quarantine needs an original path glob");
                    }
                }
            }
        }
        let mut action_ids: Vec<&str> = Vec::new();
        for (i, a) in self.actions.iter().enumerate() {
            let n = i + 1;
            if let Some(u) = a.unless() {
                if !action_ids.contains(&u) {
                    bail!("action {n}: unless = {u:?} names no earlier action");
                }
            }
            if let Some(id) = a.id() {
                if !id_ok(id) || action_ids.contains(&id) {
                    bail!("action {n}: id {id:?} is invalid or used twice");
                }
                action_ids.push(id);
            }
            match a {
                Action::Neutralize { files, .. } => {
                    let ok = self
                        .conditions
                        .iter()
                        .any(|c| matches!(c, Condition::Files { id, .. } if id == files));
                    if !ok {
                        bail!(
                            "action {n}: neutralize files = {files:?} names no `files` condition"
                        );
                    }
                }
                Action::Restore { path, sources, .. } => {
                    let parts = split_path(path).with_context(|| format!("action {n}: path"))?;
                    if parts.iter().any(|p| p.contains(['*', '?'])) {
                        bail!("action {n}: a restore path cannot have wildcards");
                    }
                    if sources.is_empty() {
                        bail!("action {n}: restore needs at least one source");
                    }
                }
                Action::DropIn { path, name, .. } => {
                    let parts = split_path(path).with_context(|| format!("action {n}: path"))?;
                    if parts.iter().any(|p| p.contains(['*', '?'])) {
                        bail!("action {n}: a drop-in path cannot have wildcards");
                    }
                    if name.trim().is_empty() {
                        bail!("action {n}: drop-in needs a store entry name");
                    }
                }
            }
        }
        if self.actions.is_empty() {
            bail!("no [[action]]: a playbook must say what to do");
        }
        Ok(())
    }
}

impl FileTest {
    fn validate(&self) -> Result<()> {
        for h in &self.sha256 {
            if h.len() != 64
                || !h
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            {
                bail!("sha256 {h:?}: 64 lowercase hex digits");
            }
        }
        if let Some(b) = &self.leading_bytes {
            parse_hex(b)?;
        }
        if let Some(t) = &self.mtime_from {
            parse_instant(t)?;
        }
        if let Some(t) = &self.mtime_before {
            parse_instant(t)?;
        }
        if self == &FileTest::default() {
            bail!("an empty file test matches everything; give at least one field");
        }
        Ok(())
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
    (line, col)
}

/// Loads every `*.toml` under `dir`, sorted by file name. Two playbooks
/// with one id are an error.
pub fn load_dir(dir: &Path) -> Result<Vec<Playbook>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    let mut out: Vec<Playbook> = Vec::new();
    for p in paths {
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let pb = Playbook::parse(&text, &p.display().to_string())?;
        if out.iter().any(|o| o.id == pb.id) {
            bail!(
                "{}: playbook id {:?} is used by another playbook",
                p.display(),
                pb.id
            );
        }
        out.push(pb);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../payloads/playbooks")
    }

    #[test]
    fn shipped_playbooks_are_valid() {
        let pbs = load_dir(&shipped()).unwrap();
        let ids: Vec<&str> = pbs.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["crowdstrike-c00000291", "mcafee-dat-5958"]);
        let cs = &pbs[0];
        let Condition::Files {
            match_any,
            except_any,
            ..
        } = &cs.conditions[0]
        else {
            panic!()
        };
        assert_eq!(
            parse_hex(match_any[0].leading_bytes.as_ref().unwrap()).unwrap(),
            [0xAA, 0xAA, 0xAA, 0xAA, 1, 0, 0x23, 1]
        );
        assert_eq!(
            except_any[0].mtime_from.as_deref(),
            Some("2024-07-19T05:27:00Z")
        );
        let mc = &pbs[1];
        assert_eq!(mc.applies.arch, [Arch::X86]);
        assert!(
            matches!(mc.actions.last(), Some(Action::Restore { sources, .. }) if sources[0] == Source::McafeeQuarantine && sources.contains(&Source::Store))
        );
    }

    const GOOD: &str = r#"
schema = 1
id = "x"
title = "t"
date = "2024-07-19"
[[when]]
kind = "files"
id = "bad"
glob = 'Windows\a\*.sys'
[[action]]
kind = "neutralize"
files = "bad"
"#;

    fn err(text: &str) -> String {
        format!("{:#}", Playbook::parse(text, "pb.toml").unwrap_err())
    }

    #[test]
    fn minimal_playbook_parses() {
        Playbook::parse(GOOD, "pb.toml").unwrap();
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let e = err("schema = 1\nid = \"x\"\ntitle = \n");
        assert!(e.starts_with("pb.toml:3:"), "{e}");
        let e = err(&GOOD.replace("kind = \"neutralize\"", "kind = \"delete\""));
        assert!(e.starts_with("pb.toml:"), "{e}");
        let e = err(&GOOD.replace("title = \"t\"", "title = \"t\"\ncolour = \"red\""));
        assert!(e.contains("colour") && e.starts_with("pb.toml:5:"), "{e}");
    }

    #[test]
    fn semantic_errors_are_explained() {
        let cases = [
            (GOOD.replace("schema = 1", "schema = 2"), "schema 2"),
            (GOOD.replace("id = \"x\"", "id = \"X Y\""), "lowercase"),
            (GOOD.replace("2024-07-19", "19/07/2024"), "YYYY-MM-DD"),
            (GOOD.replace("files = \"bad\"", "files = \"nope\""), "names no `files` condition"),
            (GOOD.replace(r"glob = 'Windows\a\*.sys'", r"glob = 'C:\Windows\a.sys'"), "drive letters"),
            (GOOD.replace(r"glob = 'Windows\a\*.sys'", r"glob = 'Windows\..\..\etc'"), "'..'"),
            (GOOD.replace(r"glob = 'Windows\a\*.sys'", r"glob = '\Windows\a'"), "relative to the volume root"),
            (GOOD.replace("[[action]]\nkind = \"neutralize\"\nfiles = \"bad\"\n", ""), "no [[action]]"),
            (GOOD.replace("glob = 'Windows\\a\\*.sys'", "glob = 'a'\nmatch_any = [{}]"), "empty file test"),
            (GOOD.replace("glob = 'Windows\\a\\*.sys'", "glob = 'a'\nmatch_any = [{ leading_bytes = \"ZZ\" }]"), "not hex"),
            (GOOD.replace("glob = 'Windows\\a\\*.sys'", "glob = 'a'\nmatch_any = [{ mtime_from = \"yesterday\" }]"), "RFC 3339"),
            (GOOD.replace("files = \"bad\"", "files = \"bad\"\nunless = \"later\""), "names no earlier action"),
            (format!("{GOOD}[[action]]\nkind = \"restore\"\npath = 'a\\*.exe'\nsources = [\"store\"]\n"), "wildcards"),
            (format!("{GOOD}[[action]]\nkind = \"restore\"\npath = 'a\\b.exe'\nsources = []\n"), "at least one source"),
            (format!("{GOOD}[[when]]\nkind = \"missing\"\nid = \"bad\"\npath = 'a'\n"), "used twice"),
            (format!("{GOOD}[applies]\nmin_build = 9\nmax_build = 2\n"), "above max_build"),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.contains(want), "expected {want:?} in: {e}");
        }
    }

    #[test]
    fn duplicate_ids_across_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.toml"), GOOD).unwrap();
        std::fs::write(d.path().join("b.toml"), GOOD).unwrap();
        let e = format!("{:#}", load_dir(d.path()).unwrap_err());
        assert!(
            e.contains("b.toml") && e.contains("used by another playbook"),
            "{e}"
        );
    }

    #[test]
    fn paths_split_both_ways() {
        assert_eq!(
            split_path(r"Windows/System32\x.sys").unwrap(),
            ["Windows", "System32", "x.sys"]
        );
        assert!(split_path("").is_err());
    }
}
