//! The known-good store, read side: which good copies of Windows system
//! files the image carries, and their verified bytes (docs/store-format.md).
//!
//! On disk: `objects/<sha256>` holds raw file content named by its
//! lowercase SHA-256, and `index.json` says which Windows product, build,
//! architecture and path each object is good for.
//!
//! This module only reads. `defib store import` in the builder writes the
//! store, sharing [`Index`] and [`Entry`] from here so both sides parse
//! and validate the same schema. It does not decide what to restore: it
//! answers "which entries match this exact Windows" and refuses to hand
//! out bytes whose size or hash differ from the index.

use crate::playbook::{split_path, Arch};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The index format version this code reads and writes.
pub const SCHEMA: u32 = 1;
/// The index file, beside `objects/`.
pub const INDEX_FILE: &str = "index.json";
/// The object folder.
pub const OBJECTS_DIR: &str = "objects";
/// The index is a few KiB per thousand entries; refuse anything that
/// could only be an attempt to exhaust memory.
const MAX_INDEX: u64 = 64 << 20;

/// `index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub schema: u32,
    #[serde(default)]
    pub entries: Vec<Entry>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            schema: SCHEMA,
            entries: Vec::new(),
        }
    }
}

/// One known-good file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// For drop-ins a playbook names (`mcafee-extra-dat-5958`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `ProductName` of the reference machine, e.g. `Windows XP Professional`.
    #[serde(default)]
    pub product: String,
    /// `CurrentBuild`. Required unless the entry is named: an entry without
    /// a build is never a restore candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<u32>,
    /// Inclusive UBR range the file is good for; absent = any UBR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ubr_min: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ubr_max: Option<u32>,
    /// `CSDVersion`, e.g. `Service Pack 3`; absent = the reference had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_pack: Option<String>,
    /// Required unless the entry is named, like `build`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    /// Relative to the volume root, `\` separated (`WINDOWS\system32\svchost.exe`).
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_version: Option<String>,
    /// Lowercase hex SHA-256 of the content; also the object's file name.
    pub sha256: String,
    pub size: u64,
    /// Where it came from (reference machine, export file), for reports.
    #[serde(default)]
    pub source: String,
}

impl Entry {
    /// What must differ for two entries to be distinct: everything but the
    /// free-text `source` and the informational `file_version`.
    pub fn same_claim(&self, o: &Entry) -> bool {
        self.name == o.name
            && self.product == o.product
            && self.build == o.build
            && self.ubr_min == o.ubr_min
            && self.ubr_max == o.ubr_max
            && norm_sp(self.service_pack.as_deref()) == norm_sp(o.service_pack.as_deref())
            && self.arch == o.arch
            && path_key(&self.path) == path_key(&o.path)
            && self.sha256 == o.sha256
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<()> {
        if !is_sha256(&self.sha256) {
            bail!("sha256 {:?} is not 64 lowercase hex digits", self.sha256);
        }
        split_path(&self.path).context("path")?;
        if let Some(n) = &self.name {
            if n.trim().is_empty() || n.chars().any(|c| c.is_control()) {
                bail!("name {n:?} is empty or has control characters");
            }
        } else if self.build.is_none() || self.arch.is_none() || self.product.trim().is_empty() {
            bail!("an entry without a name needs product, build and arch");
        }
        if let (Some(a), Some(b)) = (self.ubr_min, self.ubr_max) {
            if a > b {
                bail!("ubr_min {a} is above ubr_max {b}");
            }
        }
        Ok(())
    }
}

impl Index {
    /// Parses and validates `index.json` text; `origin` names it in
    /// errors, which carry the line and column.
    pub fn parse(text: &str, origin: &str) -> Result<Index> {
        let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
        let idx: Index = serde_json::from_str(text).map_err(|e| {
            anyhow!(
                "{origin}:{}:{}: {e}; fix the file or rebuild the store with `defib store import`",
                e.line(),
                e.column()
            )
        })?;
        if idx.schema != SCHEMA {
            bail!(
                "{origin}: schema {} is not supported (this defib reads schema {SCHEMA})",
                idx.schema
            );
        }
        for (i, e) in idx.entries.iter().enumerate() {
            e.validate()
                .with_context(|| format!("{origin}: entry {} ({})", i + 1, e.path))?;
        }
        Ok(idx)
    }

    /// Pretty JSON with a trailing newline; entries in the order given
    /// (the builder sorts them for reproducible images).
    pub fn to_json(&self) -> Result<String> {
        let mut s = serde_json::to_string_pretty(self).context("serialising the store index")?;
        s.push('\n');
        Ok(s)
    }
}

/// Fetches an object by hash from somewhere the store module cannot reach
/// itself (the PXE server, through the rescue's HTTP client): given the
/// SHA-256 and a byte cap, it returns the body, `Ok(None)` when the source
/// does not have it, or an error. The store checks what comes back.
pub type Fetch = Arc<dyn Fn(&str, u64) -> Result<Option<Vec<u8>>> + Send + Sync>;

/// Where objects can come from, tried in order.
#[derive(Clone)]
pub enum Location {
    /// A folder of `<sha256>` files: the payloads' `store/objects`, the
    /// boot medium's `defib/store/objects`.
    Dir(PathBuf),
    /// Anything else, named for messages (`http://10.0.2.2:8080/store/`).
    Fetch { label: String, fetch: Fetch },
}

impl Location {
    pub fn label(&self) -> String {
        match self {
            Location::Dir(d) => d.display().to_string(),
            Location::Fetch { label, .. } => label.clone(),
        }
    }
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.label())
    }
}

/// An opened store: an index, and where to fetch the objects it names.
/// The index decides what is good; a location only supplies bytes, and
/// they are accepted only when size and SHA-256 equal the index entry.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    pub index: Index,
    /// Which `index.json` the entries came from, and its SHA-256 (None
    /// when there was none: an empty store).
    pub index_origin: PathBuf,
    pub index_sha256: Option<String>,
    locations: Vec<Location>,
}

/// Reads and parses an index file; `Ok(None)` when it does not exist.
/// Returns the index and the SHA-256 of its bytes.
pub fn read_index(path: &Path) -> Result<Option<(Index, String)>> {
    let f = match std::fs::File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        Ok(f) => f,
    };
    let mut text = String::new();
    f.take(MAX_INDEX + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {} (is it UTF-8?)", path.display()))?;
    if text.len() as u64 > MAX_INDEX {
        bail!(
            "{} is over {MAX_INDEX} bytes: not a store index",
            path.display()
        );
    }
    let idx = Index::parse(&text, &path.display().to_string())?;
    Ok(Some((idx, sha256_hex(text.as_bytes()))))
}

/// What `verify` found. Clean when `problems` and `orphans` are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub root: PathBuf,
    pub entries: usize,
    /// Distinct objects the index refers to.
    pub objects: usize,
    /// Of those, the ones present with the right size and hash.
    pub objects_ok: usize,
    /// One line per bad entry or object: what is wrong and what to do.
    pub problems: Vec<String>,
    /// Files in `objects/` no entry refers to, and staging folders a killed
    /// import left in the store root (`../.import-*`).
    pub orphans: Vec<String>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.orphans.is_empty()
    }
}

impl Store {
    /// Opens the store at `root`, with `root/objects` as its one object
    /// location. No folder, or a folder without `index.json`, is an empty
    /// store: an image may carry none. A malformed index is an error
    /// naming the file and line.
    pub fn open(root: &Path) -> Result<Store> {
        let index_path = root.join(INDEX_FILE);
        let (index, sha) = match read_index(&index_path)? {
            Some((i, h)) => (i, Some(h)),
            None => (Index::default(), None),
        };
        Ok(Store {
            root: root.to_path_buf(),
            index,
            index_origin: index_path,
            index_sha256: sha,
            locations: vec![Location::Dir(root.join(OBJECTS_DIR))],
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the object for `sha256` lives in the store's own folder
    /// (whether or not it exists).
    pub fn object_path(&self, sha256: &str) -> PathBuf {
        self.root.join(OBJECTS_DIR).join(sha256)
    }

    /// Object locations, in the order they are tried.
    pub fn locations(&self) -> &[Location] {
        &self.locations
    }

    /// Tries `loc` after the locations already known.
    pub fn add_location(&mut self, loc: Location) {
        self.locations.push(loc);
    }

    /// Takes the entries from another index file (the boot medium's,
    /// brought up to date by `defib store sync`) instead of this one.
    /// Returns false, changing nothing, when that file does not exist; a
    /// malformed one is an error and changes nothing either.
    pub fn use_index(&mut self, path: &Path) -> Result<bool> {
        match read_index(path)? {
            None => Ok(false),
            Some((idx, sha)) => {
                self.index = idx;
                self.index_sha256 = Some(sha);
                self.index_origin = path.to_path_buf();
                Ok(true)
            }
        }
    }

    /// Entries known good for this Windows: same arch, same build, UBR
    /// inside the entry's range when it has one (an unknown UBR then
    /// matches nothing), the same service pack (none = none), and the
    /// same path without case. Named drop-ins are included only if they
    /// carry build and arch too. Never a near match.
    pub fn candidates(
        &self,
        build: u32,
        ubr: Option<u32>,
        arch: Arch,
        service_pack: Option<&str>,
        path: &str,
    ) -> Vec<&Entry> {
        let Some(want) = path_key(path) else {
            return Vec::new();
        };
        let sp = norm_sp(service_pack);
        self.index
            .entries
            .iter()
            .filter(|e| e.build == Some(build) && e.arch == Some(arch))
            .filter(|e| norm_sp(e.service_pack.as_deref()) == sp)
            .filter(|e| {
                if e.ubr_min.is_none() && e.ubr_max.is_none() {
                    return true;
                }
                ubr.is_some_and(|u| {
                    e.ubr_min.is_none_or(|lo| u >= lo) && e.ubr_max.is_none_or(|hi| u <= hi)
                })
            })
            .filter(|e| path_key(&e.path).as_ref() == Some(&want))
            .collect()
    }

    /// Entries with this name (exact: names are identifiers).
    pub fn by_name(&self, name: &str) -> Vec<&Entry> {
        self.index
            .entries
            .iter()
            .filter(|e| e.name.as_deref() == Some(name))
            .collect()
    }

    /// The object's bytes after checking size and SHA-256 against `e`,
    /// from the first location that has a good copy. Each location is
    /// read with a cap of the entry's size + 1 byte, so a huge or endless
    /// source costs no more than the entry says. A location without the
    /// object, or with a copy of the wrong size or hash, is passed over;
    /// when none has a good copy the error names every location and what
    /// was wrong there. Bytes that do not match are never returned.
    pub fn read_verified(&self, e: &Entry) -> Result<Vec<u8>> {
        if !is_sha256(&e.sha256) {
            bail!(
                "store entry for {} has an invalid sha256 {:?}",
                e.path,
                e.sha256
            );
        }
        let mut tried = Vec::new();
        let mut corrupt = false;
        for loc in &self.locations {
            let got = match loc {
                Location::Dir(d) => read_capped(&d.join(&e.sha256), e.size),
                Location::Fetch { fetch, .. } => fetch(&e.sha256, e.size + 1),
            };
            let what = match loc {
                Location::Dir(d) => d.join(&e.sha256).display().to_string(),
                Location::Fetch { label, .. } => format!("{label}{}", e.sha256),
            };
            match got {
                Ok(None) => tried.push(format!("{what}: absent")),
                Err(err) => tried.push(format!("{what}: {err:#}")),
                Ok(Some(data)) => {
                    let n = data.len() as u64;
                    if n != e.size {
                        corrupt = true;
                        let n = if n > e.size {
                            format!("over {} bytes", e.size)
                        } else {
                            format!("{n} bytes")
                        };
                        tried.push(format!("{what} is corrupt: {n}, the index says {}", e.size));
                        continue;
                    }
                    let h = sha256_hex(&data);
                    if h != e.sha256 {
                        corrupt = true;
                        tried.push(format!("{what} is corrupt: its content hashes to {h}"));
                        continue;
                    }
                    return Ok(data);
                }
            }
        }
        if tried.is_empty() {
            bail!(
                "store object {} ({}) is missing: this store has no object location",
                e.sha256,
                e.path
            );
        }
        let fix = if corrupt {
            "refused; copy a good store onto the medium with `defib store sync` or rebuild the image"
        } else {
            "bring the store onto the medium with `defib store sync` or rebuild the image"
        };
        bail!(
            "store object {} ({}) is {}: {}; {fix}",
            e.sha256,
            e.path,
            if corrupt { "corrupt" } else { "missing" },
            tried.join("; ")
        )
    }

    /// Checks every entry (schema rules, object present, size, hash) and
    /// lists files in `objects/` that no entry uses.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut r = VerifyReport {
            root: self.root.clone(),
            entries: self.index.entries.len(),
            ..Default::default()
        };
        let mut shas: Vec<&str> = self
            .index
            .entries
            .iter()
            .map(|e| e.sha256.as_str())
            .collect();
        shas.sort_unstable();
        shas.dedup();
        r.objects = shas.len();
        for sha in &shas {
            // The first entry for an object decides the expected size;
            // entries disagreeing on size are a problem of their own.
            let es: Vec<&Entry> = self
                .index
                .entries
                .iter()
                .filter(|e| e.sha256 == *sha)
                .collect();
            let Some(first) = es.first() else { continue };
            if es.iter().any(|e| e.size != first.size) {
                r.problems.push(format!(
                    "entries for object {sha} disagree on its size; fix index.json or re-import"
                ));
                continue;
            }
            match self.read_verified(first) {
                Ok(_) => r.objects_ok += 1,
                Err(e) => r.problems.push(format!("{e:#}")),
            }
        }
        let objects = self.root.join(OBJECTS_DIR);
        match std::fs::read_dir(&objects) {
            Ok(rd) => {
                for de in rd {
                    let de = de.with_context(|| format!("listing {}", objects.display()))?;
                    let name = de.file_name().to_string_lossy().to_string();
                    if shas.binary_search(&name.as_str()).is_err() {
                        r.orphans.push(name);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("listing {}", objects.display())),
        }
        // `defib store import` stages in `.import-*` beside `objects/`; one
        // left behind by a killed import would ride into the image.
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            for de in rd.flatten() {
                let name = de.file_name().to_string_lossy().to_string();
                if name.starts_with(".import-") {
                    r.orphans
                        .push(format!("../{name} (left by an interrupted import)"));
                }
            }
        }
        r.orphans.sort();
        Ok(r)
    }
}

/// Up to `size + 1` bytes of the file at `p`; `Ok(None)` if it is absent.
fn read_capped(p: &Path, size: u64) -> Result<Option<Vec<u8>>> {
    let f = match std::fs::File::open(p) {
        Ok(f) => f,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("opening {}", p.display())),
    };
    let mut data = Vec::new();
    f.take(size + 1)
        .read_to_end(&mut data)
        .with_context(|| format!("reading {}", p.display()))?;
    Ok(Some(data))
}

pub use crate::hash::{is_sha256, sha256_hex};

/// A path as compared on NTFS: components without case, `\` or `/`
/// separated, so `WINDOWS\system32` and `Windows/System32` are one path.
/// None for a path a playbook or index could not hold (`..`, drive).
pub fn path_key(p: &str) -> Option<Vec<String>> {
    split_path(p)
        .ok()
        .map(|parts| parts.iter().map(|c| c.to_lowercase()).collect())
}

/// A service pack as compared: trimmed, without case; empty = none.
fn norm_sp(sp: Option<&str>) -> Option<String> {
    sp.map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SP3: Option<&str> = Some("Service Pack 3");

    fn entry(path: &str, content: &[u8]) -> Entry {
        Entry {
            name: None,
            product: "Windows XP Professional".into(),
            build: Some(2600),
            ubr_min: None,
            ubr_max: None,
            service_pack: Some("Service Pack 3".into()),
            arch: Some(Arch::X86),
            path: path.into(),
            file_version: Some("5.1.2600.5512".into()),
            sha256: sha256_hex(content),
            size: content.len() as u64,
            source: "test".into(),
        }
    }

    fn store_with(entries: &[(Entry, &[u8])]) -> (tempfile::TempDir, Store) {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(t.path().join(OBJECTS_DIR)).expect("mkdir");
        for (e, data) in entries {
            std::fs::write(t.path().join(OBJECTS_DIR).join(&e.sha256), data).expect("object");
        }
        let idx = Index {
            schema: SCHEMA,
            entries: entries.iter().map(|(e, _)| e.clone()).collect(),
        };
        std::fs::write(t.path().join(INDEX_FILE), idx.to_json().expect("json")).expect("index");
        let s = Store::open(t.path()).expect("open");
        (t, s)
    }

    #[test]
    fn lookup_by_build_arch_sp_and_path_without_case() {
        let (_t, s) = store_with(&[(entry(r"WINDOWS\system32\svchost.exe", b"good"), b"good")]);
        let hit = |b, a, sp, p| s.candidates(b, None, a, sp, p).len();
        assert_eq!(
            hit(2600, Arch::X86, SP3, r"Windows\System32\SVCHOST.EXE"),
            1
        );
        assert_eq!(
            hit(
                2600,
                Arch::X86,
                Some("service pack 3 "),
                "windows/system32/svchost.exe"
            ),
            1
        );
        assert_eq!(
            hit(2600, Arch::X64, SP3, r"WINDOWS\system32\svchost.exe"),
            0,
            "arch"
        );
        assert_eq!(
            hit(3790, Arch::X86, SP3, r"WINDOWS\system32\svchost.exe"),
            0,
            "build"
        );
        assert_eq!(
            hit(
                2600,
                Arch::X86,
                Some("Service Pack 2"),
                r"WINDOWS\system32\svchost.exe"
            ),
            0
        );
        assert_eq!(
            hit(2600, Arch::X86, None, r"WINDOWS\system32\svchost.exe"),
            0,
            "no sp"
        );
        assert_eq!(
            hit(2600, Arch::X86, SP3, r"WINDOWS\system32\lsass.exe"),
            0,
            "path"
        );
        assert_eq!(
            hit(2600, Arch::X86, SP3, r"..\WINDOWS\system32\svchost.exe"),
            0
        );
    }

    #[test]
    fn lookup_by_ubr_range() {
        let mut e = entry(r"Windows\System32\svchost.exe", b"w10");
        e.build = Some(19045);
        e.arch = Some(Arch::X64);
        e.service_pack = None;
        e.ubr_min = Some(3803);
        e.ubr_max = Some(4046);
        let (_t, s) = store_with(&[(e, b"w10")]);
        let p = r"WINDOWS\SYSTEM32\svchost.exe";
        assert_eq!(s.candidates(19045, Some(3803), Arch::X64, None, p).len(), 1);
        assert_eq!(s.candidates(19045, Some(4046), Arch::X64, None, p).len(), 1);
        assert_eq!(s.candidates(19045, Some(3802), Arch::X64, None, p).len(), 0);
        assert_eq!(s.candidates(19045, Some(4047), Arch::X64, None, p).len(), 0);
        assert_eq!(
            s.candidates(19045, None, Arch::X64, None, p).len(),
            0,
            "unknown UBR"
        );
        assert_eq!(
            s.candidates(19045, Some(4000), Arch::Arm64, None, p).len(),
            0
        );
    }

    #[test]
    fn by_name_and_read_verified() {
        let mut d = entry(r"Program Files\McAfee\EXTRA.DAT", b"extra");
        d.name = Some("mcafee-extra-dat-5958".into());
        d.build = None;
        d.arch = None;
        let (_t, s) = store_with(&[(d, b"extra")]);
        let es = s.by_name("mcafee-extra-dat-5958");
        assert_eq!(es.len(), 1);
        assert_eq!(s.read_verified(es[0]).expect("read"), b"extra");
        assert!(s.by_name("other").is_empty());
        // Without build and arch a named entry is never a restore candidate.
        assert!(s
            .candidates(
                2600,
                None,
                Arch::X86,
                SP3,
                r"Program Files\McAfee\EXTRA.DAT"
            )
            .is_empty());
    }

    #[test]
    fn corrupt_object_is_refused() {
        let e = entry(r"WINDOWS\system32\svchost.exe", b"good");
        let (t, s) = store_with(&[(e.clone(), b"good")]);
        std::fs::write(t.path().join(OBJECTS_DIR).join(&e.sha256), b"evil").expect("w");
        let err = s.read_verified(&e).unwrap_err().to_string();
        assert!(
            err.contains("is corrupt") && err.contains("rebuild the image"),
            "{err}"
        );
        std::fs::write(t.path().join(OBJECTS_DIR).join(&e.sha256), b"longer").expect("w");
        let err = s.read_verified(&e).unwrap_err().to_string();
        assert!(err.contains("over 4 bytes, the index says 4"), "{err}");
        let r = s.verify().expect("verify");
        assert!(!r.is_clean());
        assert_eq!(r.objects_ok, 0);
    }

    #[test]
    fn missing_object_and_orphans() {
        let e = entry(r"WINDOWS\system32\svchost.exe", b"good");
        let (t, s) = store_with(&[(e.clone(), b"good")]);
        std::fs::remove_file(t.path().join(OBJECTS_DIR).join(&e.sha256)).expect("rm");
        std::fs::write(t.path().join(OBJECTS_DIR).join("stray.tmp"), b"x").expect("w");
        std::fs::create_dir(t.path().join(".import-1-2")).expect("mkdir");
        let err = s.read_verified(&e).unwrap_err().to_string();
        assert!(err.contains("is missing"), "{err}");
        let r = s.verify().expect("verify");
        assert_eq!(r.problems.len(), 1);
        assert_eq!(
            r.orphans,
            [
                "../.import-1-2 (left by an interrupted import)",
                "stray.tmp"
            ]
        );
    }

    #[test]
    fn objects_come_from_a_second_location_verified() {
        let good = b"svchost from the store";
        let e = entry(r"WINDOWS\system32\svchost.exe", good);
        // The payload store has the index but not the object (a new image).
        let (t, mut s) = store_with(&[(e.clone(), good)]);
        std::fs::remove_file(t.path().join(OBJECTS_DIR).join(&e.sha256)).expect("rm");
        let medium = tempfile::tempdir().expect("tempdir");
        s.add_location(Location::Dir(medium.path().to_path_buf()));
        let err = format!("{:#}", s.read_verified(&e).unwrap_err());
        assert!(
            err.contains("is missing") && err.contains("absent"),
            "{err}"
        );
        std::fs::write(medium.path().join(&e.sha256), good).expect("w");
        assert_eq!(s.read_verified(&e).expect("read"), good);

        // One byte flipped on the medium: refused, the file named.
        let mut bad = good.to_vec();
        bad[3] ^= 1;
        std::fs::write(medium.path().join(&e.sha256), &bad).expect("w");
        let err = format!("{:#}", s.read_verified(&e).unwrap_err());
        let named = medium.path().join(&e.sha256).display().to_string();
        assert!(
            err.contains("is corrupt") && err.contains(&named) && err.contains("refused"),
            "{err}"
        );
        // A later location with a good copy serves it; the bad one is passed over.
        let third = tempfile::tempdir().expect("tempdir");
        std::fs::write(third.path().join(&e.sha256), good).expect("w");
        s.add_location(Location::Dir(third.path().to_path_buf()));
        assert_eq!(s.read_verified(&e).expect("read"), good);
    }

    #[test]
    fn fetched_objects_are_capped_and_checked() {
        let good = b"fetched bytes";
        let e = entry(r"WINDOWS\system32\svchost.exe", good);
        let (t, mut s) = store_with(&[(e.clone(), good)]);
        std::fs::remove_file(t.path().join(OBJECTS_DIR).join(&e.sha256)).expect("rm");
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let body = Arc::new(std::sync::Mutex::new(Some(good.to_vec())));
        let (seen2, body2) = (seen.clone(), body.clone());
        s.add_location(Location::Fetch {
            label: "http://10.0.2.2/store/objects/".into(),
            fetch: Arc::new(move |sha: &str, cap: u64| {
                seen2.lock().unwrap().push((sha.to_string(), cap));
                Ok(body2.lock().unwrap().clone())
            }),
        });
        assert_eq!(s.read_verified(&e).expect("read"), good);
        assert_eq!(
            seen.lock().unwrap().as_slice(),
            [(e.sha256.clone(), good.len() as u64 + 1)],
            "asks for the object by hash with a cap of size + 1"
        );
        *body.lock().unwrap() = Some(b"fetched bytez".to_vec());
        let err = format!("{:#}", s.read_verified(&e).unwrap_err());
        assert!(
            err.contains("http://10.0.2.2/store/objects/") && err.contains("hashes to"),
            "{err}"
        );
        *body.lock().unwrap() = None;
        let err = format!("{:#}", s.read_verified(&e).unwrap_err());
        assert!(err.contains("is missing"), "{err}");
    }

    #[test]
    fn index_and_object_disagree() {
        // The object is what another index said: the size in this index
        // is wrong, so the bytes are refused even though they hash right.
        let mut e = entry(r"WINDOWS\system32\svchost.exe", b"good");
        let (_t, s) = store_with(&[(e.clone(), b"good")]);
        e.size = 3;
        let err = format!("{:#}", s.read_verified(&e).unwrap_err());
        assert!(err.contains("over 3 bytes, the index says 3"), "{err}");
        e.size = 5;
        let err = format!("{:#}", s.read_verified(&e).unwrap_err());
        assert!(err.contains("4 bytes, the index says 5"), "{err}");
    }

    #[test]
    fn a_medium_index_replaces_the_built_in_one() {
        let (t, mut s) = store_with(&[(entry(r"WINDOWS\system32\a.exe", b"a"), b"a")]);
        let built_in = s.index_sha256.clone().expect("hash");
        let medium = tempfile::tempdir().expect("tempdir");
        assert!(!s
            .use_index(&medium.path().join(INDEX_FILE))
            .expect("absent"));
        let idx = Index {
            schema: SCHEMA,
            entries: vec![
                entry(r"WINDOWS\system32\a.exe", b"a"),
                entry(r"WINDOWS\system32\b.exe", b"b"),
            ],
        };
        let text = idx.to_json().expect("json");
        std::fs::write(medium.path().join(INDEX_FILE), &text).expect("w");
        assert!(s.use_index(&medium.path().join(INDEX_FILE)).expect("use"));
        assert_eq!(s.index.entries.len(), 2);
        assert_eq!(
            s.index_sha256.as_deref(),
            Some(sha256_hex(text.as_bytes()).as_str())
        );
        assert_ne!(s.index_sha256.as_deref(), Some(built_in.as_str()));
        // A malformed medium index changes nothing.
        std::fs::write(medium.path().join(INDEX_FILE), "{").expect("w");
        assert!(s.use_index(&medium.path().join(INDEX_FILE)).is_err());
        assert_eq!(s.index.entries.len(), 2);
        drop(t);
    }

    #[test]
    fn clean_store_verifies() {
        let (_t, s) = store_with(&[
            (entry(r"WINDOWS\system32\svchost.exe", b"a"), b"a"),
            (entry(r"WINDOWS\system32\lsass.exe", b"b"), b"b"),
        ]);
        let r = s.verify().expect("verify");
        assert!(r.is_clean(), "{r:?}");
        assert_eq!((r.entries, r.objects, r.objects_ok), (2, 2, 2));
    }

    #[test]
    fn malformed_index_names_file_and_line() {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            t.path().join(INDEX_FILE),
            "{\"schema\": 1,\n \"entries\": [\n  {\"path\": }\n]}\n",
        )
        .expect("w");
        let err = Store::open(t.path()).unwrap_err().to_string();
        assert!(err.contains("index.json:3:"), "{err}");
        std::fs::write(
            t.path().join(INDEX_FILE),
            "{\"schema\": 2, \"entries\": []}",
        )
        .expect("w");
        assert!(Store::open(t.path())
            .unwrap_err()
            .to_string()
            .contains("schema 2"));
        let mut bad = entry(r"..\x", b"a");
        bad.sha256 = "ABC".into();
        let idx = Index {
            schema: 1,
            entries: vec![bad],
        };
        std::fs::write(t.path().join(INDEX_FILE), idx.to_json().expect("json")).expect("w");
        let err = format!("{:#}", Store::open(t.path()).unwrap_err());
        assert!(err.contains("entry 1"), "{err}");
        std::fs::write(
            t.path().join(INDEX_FILE),
            "{\"schema\":1,\"entries\":[],\"extra\":1}",
        )
        .expect("w");
        assert!(Store::open(t.path()).is_err(), "unknown fields are refused");
    }

    #[test]
    fn empty_or_absent_store() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&t.path().join("nope")).expect("missing dir is empty");
        assert!(s.index.entries.is_empty());
        assert!(s
            .candidates(2600, None, Arch::X86, SP3, r"WINDOWS\system32\svchost.exe")
            .is_empty());
        assert!(s.verify().expect("verify").is_clean());
        let s = Store::open(t.path()).expect("dir without index is empty");
        assert!(s.index.entries.is_empty());
    }

    #[test]
    fn same_claim_ignores_source_and_path_case() {
        let a = entry(r"WINDOWS\system32\svchost.exe", b"a");
        let mut b = a.clone();
        b.source = "other machine".into();
        b.path = r"Windows\System32\svchost.exe".into();
        assert!(a.same_claim(&b));
        b.build = Some(2601);
        assert!(!a.same_claim(&b));
    }
}
