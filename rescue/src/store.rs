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

/// An opened store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    pub index: Index,
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
    /// Opens the store at `root`. No folder, or a folder without
    /// `index.json`, is an empty store: an image may carry none. A
    /// malformed index is an error naming the file and line.
    pub fn open(root: &Path) -> Result<Store> {
        let index_path = root.join(INDEX_FILE);
        let index = match std::fs::File::open(&index_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index::default(),
            Err(e) => return Err(e).with_context(|| format!("opening {}", index_path.display())),
            Ok(f) => {
                let mut text = String::new();
                f.take(MAX_INDEX + 1)
                    .read_to_string(&mut text)
                    .with_context(|| format!("reading {} (is it UTF-8?)", index_path.display()))?;
                if text.len() as u64 > MAX_INDEX {
                    bail!(
                        "{} is over {MAX_INDEX} bytes: not a store index",
                        index_path.display()
                    );
                }
                Index::parse(&text, &index_path.display().to_string())?
            }
        };
        Ok(Store {
            root: root.to_path_buf(),
            index,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the object for `sha256` lives (whether or not it exists).
    pub fn object_path(&self, sha256: &str) -> PathBuf {
        self.root.join(OBJECTS_DIR).join(sha256)
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

    /// The object's bytes after checking size and SHA-256 against `e`.
    /// On a mismatch the bytes are not returned.
    pub fn read_verified(&self, e: &Entry) -> Result<Vec<u8>> {
        if !is_sha256(&e.sha256) {
            bail!(
                "store entry for {} has an invalid sha256 {:?}",
                e.path,
                e.sha256
            );
        }
        let p = self.object_path(&e.sha256);
        let f = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!(
                "store object {} ({}) is missing from {}; rebuild the image",
                e.sha256,
                e.path,
                p.display()
            ),
            Err(err) => return Err(err).with_context(|| format!("opening {}", p.display())),
        };
        let len = f
            .metadata()
            .with_context(|| format!("reading the size of {}", p.display()))?
            .len();
        if len != e.size {
            bail!(
                "store object {} is corrupt: {len} bytes, the index says {}; rebuild the image",
                e.sha256,
                e.size
            );
        }
        let mut data = Vec::new();
        f.take(e.size + 1)
            .read_to_end(&mut data)
            .with_context(|| format!("reading {}", p.display()))?;
        let got = sha256_hex(&data);
        if data.len() as u64 != e.size || got != e.sha256 {
            bail!(
                "store object {} is corrupt: its content hashes to {got}; rebuild the image",
                e.sha256
            );
        }
        Ok(data)
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
        assert!(err.contains("6 bytes, the index says 4"), "{err}");
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
