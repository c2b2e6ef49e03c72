//! `defib store import|list|verify`: the write side of the known-good store
//! (docs/store-format.md).
//!
//! `import` takes what `scripts/export-known-good.ps1` wrote on a healthy
//! reference machine (a zip, or the unpacked folder it writes without
//! .NET 4.5), checks it, and adds its files to `objects/` and `index.json`.
//! Every export is hostile until proven otherwise: names that could escape
//! a folder, links, encryption, duplicates, oversized or absurdly
//! compressed members, and anything the manifest does not vouch for by
//! size and SHA-256 are refused, and a refused import leaves the store
//! exactly as it was.
//!
//! This is not a zip extractor: nothing from an export is ever written
//! under its own name, only as `objects/<sha256>` after the hash matched.
//! The schema and the read side (lookup, verification) live in
//! `defib_rescue::store`, shared with the rescue.

use crate::fleet::term;
use anyhow::{anyhow, bail, Context, Result};
use defib_rescue::playbook::{split_path, Arch};
use defib_rescue::store::{is_sha256, path_key, Entry, Store, INDEX_FILE, OBJECTS_DIR};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// The manifest's name inside an export.
pub const MANIFEST: &str = "defib-export.json";
/// The export manifest version this code reads.
pub const EXPORT_SCHEMA: u32 = 1;
/// No Windows system file we would restore is near 512 MiB; a member that
/// says or turns out bigger is refused.
pub const MAX_FILE: u64 = 512 << 20;
/// All members together.
pub const MAX_TOTAL: u64 = 4 << 30;
/// Deflate tops out near 1032:1 (RFC 1951: a 258-byte match in about two
/// bits), so a 1000:1 limit would catch almost nothing. PE files compress
/// 2-4:1; 200:1 over 1 MiB only refuses padding built to exhaust a disk.
pub const MAX_RATIO: u64 = 200;
const RATIO_FLOOR: u64 = 1 << 20;
/// A manifest is a few hundred bytes per file.
const MAX_MANIFEST: u64 = 16 << 20;
/// An export holds a handful of files; many thousands is not one.
const MAX_MEMBERS: usize = 10_000;
/// Zip member names longer than this are not from the script.
const MAX_NAME: usize = 1024;
/// Unix file-type bits in the upper 16 bits of a zip's external
/// attributes (APPNOTE 4.4.15 with Info-ZIP's Unix convention; S_IFLNK
/// from POSIX <sys/stat.h>).
const S_IFMT: u32 = 0o170_000;
const S_IFLNK: u32 = 0o120_000;

/// The table `defib store list` prints.
pub fn render_list(entries: &[Entry]) -> String {
    let mut out = format!(
        "{:<24} {:<28} {:>10} {:<5} {:<40} {:<16} {:<12} {:>10}\n",
        "NAME", "PRODUCT", "BUILD", "ARCH", "PATH", "VERSION", "SHA256", "SIZE"
    );
    for e in entries {
        let build = match (e.build, e.ubr_min, e.ubr_max) {
            (Some(b), Some(lo), Some(hi)) if lo == hi => format!("{b}.{lo}"),
            (Some(b), Some(lo), Some(hi)) => format!("{b}.{lo}-{hi}"),
            (Some(b), _, _) => b.to_string(),
            (None, _, _) => "-".into(),
        };
        // index.json may be older than the import checks, or edited by
        // hand: nothing in it reaches the terminal unescaped.
        out.push_str(&format!(
            "{:<24} {:<28} {:>10} {:<5} {:<40} {:<16} {:<12} {:>10}\n",
            term(e.name.as_deref().unwrap_or("-")),
            term(&e.product),
            build,
            e.arch.map(Arch::as_str).unwrap_or("-"),
            term(&e.path),
            term(e.file_version.as_deref().unwrap_or("-")),
            term(&e.sha256.chars().take(12).collect::<String>()),
            e.size
        ));
    }
    if entries.is_empty() {
        out.push_str("(empty store)\n");
    }
    out
}

/// `defib-export.json`, as the export script writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportManifest {
    pub schema: u32,
    /// `ProductName`.
    pub product: String,
    /// `CurrentBuildNumber`.
    pub build: u32,
    /// `UBR` (Windows 10 and later), else null.
    #[serde(default)]
    pub ubr: Option<u32>,
    /// `CSDVersion`, null when there is none.
    #[serde(default)]
    pub service_pack: Option<String>,
    pub arch: Arch,
    #[serde(default)]
    pub computer: Option<String>,
    /// When it was exported (RFC 3339, UTC); recorded, not interpreted.
    pub exported: String,
    pub files: Vec<ExportFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportFile {
    /// Relative to the volume root, `\` separated.
    pub path: String,
    #[serde(default)]
    pub file_version: Option<String>,
    pub sha256: String,
    pub size: u64,
    /// The member holding its bytes, `/` separated.
    pub zip_path: String,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    pub store: PathBuf,
    pub product: String,
    pub build: u32,
    pub ubr: Option<u32>,
    pub arch: Arch,
    pub files: usize,
    pub objects_added: usize,
    pub objects_present: usize,
    pub entries_added: usize,
    pub entries_present: usize,
    pub warnings: Vec<String>,
}

/// Imports an export (zip or folder) into the store at `store_dir`.
/// All checks run and every object is staged and hashed inside the store
/// folder before anything visible changes; the new `index.json` replaces
/// the old one last, by rename. On any error the store is left as it was.
pub fn import(input: &Path, store_dir: &Path) -> Result<ImportSummary> {
    let mut export = Export::open(input)?;
    let manifest = export.manifest()?;
    check_manifest(&manifest, &export.members).with_context(|| {
        format!(
            "{}: {MANIFEST} does not describe the export",
            input.display()
        )
    })?;

    let store = Store::open(store_dir)?;
    let source = format!(
        "{}, exported {}, {}",
        manifest.computer.as_deref().unwrap_or("unnamed machine"),
        manifest.exported,
        input
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    );

    let created_store_dir = !store_dir.exists();
    std::fs::create_dir_all(store_dir)
        .with_context(|| format!("creating the store folder {}", store_dir.display()))?;
    let result = stage_and_commit(&mut export, &manifest, &store, &source);
    if result.is_err() && created_store_dir {
        // Leave no empty store behind a failed first import. remove_dir
        // only removes an empty folder, so nothing else can be lost.
        let _ = std::fs::remove_dir(store_dir);
    }
    let (objects_added, objects_present, entries_added, entries_present, warnings) = result?;
    Ok(ImportSummary {
        store: store_dir.to_path_buf(),
        product: manifest.product.clone(),
        build: manifest.build,
        ubr: manifest.ubr,
        arch: manifest.arch,
        files: manifest.files.len(),
        objects_added,
        objects_present,
        entries_added,
        entries_present,
        warnings,
    })
}

/// (objects added, objects already present, entries added, entries
/// already present, warnings).
type Counts = (usize, usize, usize, usize, Vec<String>);

fn stage_and_commit(
    export: &mut Export,
    manifest: &ExportManifest,
    store: &Store,
    source: &str,
) -> Result<Counts> {
    let root = store.root();
    let staging = Staging::new(root)?;
    let mut warnings = Vec::new();
    let mut to_move: BTreeSet<String> = BTreeSet::new();
    let mut present: BTreeSet<String> = BTreeSet::new();
    let mut index = store.index.clone();
    let (mut added, mut kept) = (0, 0);

    for f in &manifest.files {
        let sha = f.sha256.to_ascii_lowercase();
        if !to_move.contains(&sha) && !present.contains(&sha) {
            let staged = staging.path.join(&sha);
            let (size, got) = export
                .copy_member(&f.zip_path, f.size, &staged)
                .with_context(|| format!("{}: reading {}", export.origin, f.zip_path))?;
            if size != f.size {
                bail!(
                    "{}: {} is {size} bytes, the manifest says {}; the export is damaged, re-export it",
                    export.origin,
                    f.zip_path,
                    f.size
                );
            }
            if got != sha {
                bail!(
                    "{}: {} has SHA-256 {got}, the manifest says {sha}; the export is damaged or was edited, re-export it",
                    export.origin,
                    f.zip_path
                );
            }
            match object_state(&store.object_path(&sha), f.size, &sha)? {
                ObjectState::Good => {
                    present.insert(sha.clone());
                }
                ObjectState::Missing => {
                    to_move.insert(sha.clone());
                }
                ObjectState::Bad => {
                    warnings.push(format!(
                        "object {sha} was corrupt in the store; replaced with the verified copy from {}",
                        f.zip_path
                    ));
                    to_move.insert(sha.clone());
                }
            }
        }
        let entry = Entry {
            name: None,
            product: manifest.product.trim().to_string(),
            build: Some(manifest.build),
            ubr_min: manifest.ubr,
            ubr_max: manifest.ubr,
            service_pack: manifest
                .service_pack
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            arch: Some(manifest.arch),
            path: f.path.clone(),
            file_version: f.file_version.clone().filter(|v| !v.trim().is_empty()),
            sha256: sha.clone(),
            size: f.size,
            source: source.to_string(),
        };
        entry
            .validate()
            .with_context(|| format!("{}: file {}", export.origin, f.path))?;
        if index.entries.iter().any(|e| e.same_claim(&entry)) {
            kept += 1;
            continue;
        }
        // Same Windows, same path, another hash: both are kept (language
        // editions differ), and the rescue treats it as ambiguous.
        if index.entries.iter().any(|e| {
            e.name.is_none()
                && e.build == entry.build
                && e.arch == entry.arch
                && e.ubr_min == entry.ubr_min
                && e.service_pack == entry.service_pack
                && path_key(&e.path) == path_key(&entry.path)
                && e.sha256 != entry.sha256
        }) {
            warnings.push(format!(
                "{} already has another known-good hash for this build; both are kept",
                f.path
            ));
        }
        index.entries.push(entry);
        added += 1;
    }

    let objects_present = present.len();
    let objects_added = to_move.len();
    if added == 0 && objects_added == 0 {
        // A re-import: leave the store byte for byte as it was.
        return Ok((0, objects_present, 0, kept, warnings));
    }
    sort_entries(&mut index.entries);
    let staged_index = staging.path.join(INDEX_FILE);
    write_synced(&staged_index, index.to_json()?.as_bytes())?;
    // The staging folder is shaped like a store: read the new index back
    // as the rescue will before anything moves.
    Store::open(&staging.path).context("re-reading the new index")?;
    let mut undo = Undo::default();
    match commit(root, &staging, &to_move, &staged_index, &mut undo) {
        Ok(mut late) => {
            warnings.append(&mut late);
            // `staging`, with any replaced corrupt objects, goes on drop.
            Ok((objects_added, objects_present, added, kept, warnings))
        }
        Err(e) => {
            // Before the index rename nothing points at the moved objects:
            // put the store back as it was, then report the first error.
            let problems = undo.roll_back();
            if problems.is_empty() {
                Err(e)
            } else {
                Err(e.context(format!(
                    "the import failed and undoing it did not fully work ({}); run `defib store verify`",
                    problems.join("; ")
                )))
            }
        }
    }
}

/// What a commit changed in the store so far, to put back on failure.
#[derive(Default)]
struct Undo {
    /// `objects/` did not exist before this import.
    created_objects_dir: Option<PathBuf>,
    /// Each object placed: its path, and where the corrupt file it
    /// replaced was set aside (inside the staging folder).
    placed: Vec<(PathBuf, Option<PathBuf>)>,
    /// An object moved aside whose replacement was not placed yet.
    aside: Option<(PathBuf, PathBuf)>,
}

impl Undo {
    /// Restores what was there; returns what could not be restored.
    fn roll_back(self) -> Vec<String> {
        let mut problems = Vec::new();
        let restore = |to: &Path, from: &Path| {
            std::fs::rename(from, to)
                .err()
                .map(|e| format!("restoring {}: {e}", to.display()))
        };
        if let Some((to, from)) = &self.aside {
            problems.extend(restore(to, from));
        }
        for (path, aside) in self.placed.iter().rev() {
            problems.extend(match aside {
                Some(from) => restore(path, from),
                None => std::fs::remove_file(path)
                    .err()
                    .map(|e| format!("removing {}: {e}", path.display())),
            });
        }
        if let Some(dir) = &self.created_objects_dir {
            // Only if empty: remove_dir never takes content with it.
            let _ = std::fs::remove_dir(dir);
        }
        problems
    }
}

/// Moves the staged objects into `objects/`, verifies them there, and
/// renames the staged index over `index.json`: that rename is the single
/// commit point, and every failure before it is undone by `undo`. Returns
/// warnings for what failed after it (the import stands).
fn commit(
    root: &Path,
    staging: &Staging,
    to_move: &BTreeSet<String>,
    staged_index: &Path,
    undo: &mut Undo,
) -> Result<Vec<String>> {
    let objects = root.join(OBJECTS_DIR);
    if !objects.exists() {
        std::fs::create_dir(&objects).with_context(|| format!("creating {}", objects.display()))?;
        undo.created_objects_dir = Some(objects.clone());
    }
    for sha in to_move {
        fail_point("object")?;
        let to = objects.join(sha);
        // A corrupt object being replaced is set aside, not overwritten,
        // so a failed import can put it back.
        let aside = if to.exists() {
            let aside = staging.path.join(format!("replaced-{sha}"));
            std::fs::rename(&to, &aside)
                .with_context(|| format!("moving the corrupt {} aside", to.display()))?;
            undo.aside = Some((to.clone(), aside.clone()));
            Some(aside)
        } else {
            None
        };
        std::fs::rename(staging.path.join(sha), &to)
            .with_context(|| format!("moving object {sha} into {}", objects.display()))?;
        undo.aside = None;
        undo.placed.push((to, aside));
    }
    sync_dir(&objects)?;
    // Read back what we placed, as the rescue will, before the index
    // points at it.
    for sha in to_move {
        let p = objects.join(sha);
        let f = File::open(&p).with_context(|| format!("re-reading {}", p.display()))?;
        let (_, got) =
            hash_reader(f, MAX_FILE).with_context(|| format!("re-reading {}", p.display()))?;
        if &got != sha {
            bail!(
                "{} reads back with SHA-256 {got} after writing; the disk may be failing",
                p.display()
            );
        }
    }
    fail_point("index")?;
    let index_path = root.join(INDEX_FILE);
    std::fs::rename(staged_index, &index_path)
        .with_context(|| format!("replacing {}", index_path.display()))?;
    // Committed. A failed directory sync now is not a failed import.
    let mut late = Vec::new();
    if let Err(e) = sync_dir(root) {
        late.push(format!(
            "{e:#}; the import is done but may not survive a power cut, run `defib store verify` after one"
        ));
    }
    Ok(late)
}

// Test-only fault injection: `FAIL_AT` = (point, n) makes the n-th
// (0-based) pass through `point` on this thread fail, so the rollback of
// a half-done commit can be tested without a failing disk.
#[cfg(test)]
thread_local! {
    static FAIL_AT: Cell<Option<(&'static str, usize)>> = const { Cell::new(None) };
}

fn fail_point(point: &'static str) -> Result<()> {
    #[cfg(test)]
    if let Some((p, n)) = FAIL_AT.get() {
        if p == point {
            if n == 0 {
                FAIL_AT.set(None);
                bail!("injected failure at {point}");
            }
            FAIL_AT.set(Some((p, n - 1)));
        }
    }
    let _ = point;
    Ok(())
}

/// Sorts entries for reproducible index files.
pub fn sort_entries(entries: &mut [Entry]) {
    entries.sort_by(|a, b| {
        let key = |e: &Entry| {
            (
                e.name.clone(),
                e.product.clone(),
                e.build,
                e.arch,
                path_key(&e.path),
                e.ubr_min,
                e.ubr_max,
                e.service_pack.clone(),
                e.sha256.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
}

enum ObjectState {
    Good,
    Missing,
    Bad,
}

/// What is at an object's place in the store. Anything but a regular file
/// (a folder, a link) is refused rather than replaced: the commit moves a
/// bad object aside and deletes it, which must never take a folder of
/// someone's files with it.
fn object_state(path: &Path, size: u64, sha: &str) -> Result<ObjectState> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ObjectState::Missing),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if !meta.is_file() {
        bail!(
            "{} is not a regular file (a folder or a link?); move it out of the store and import again",
            path.display()
        );
    }
    let Ok(f) = File::open(path) else {
        return Ok(ObjectState::Bad);
    };
    Ok(match hash_reader(f, size) {
        Ok((n, h)) if n == size && h == sha => ObjectState::Good,
        _ => ObjectState::Bad,
    })
}

fn hash_reader(r: impl Read, limit: u64) -> std::io::Result<(u64, String)> {
    let mut w = HashingWriter::new(std::io::sink());
    let n = std::io::copy(&mut r.take(limit + 1), &mut w)?;
    Ok((n, w.hex()))
}

/// A staging folder inside the store (same filesystem, so the final
/// renames are atomic), removed with its content when dropped.
struct Staging {
    path: PathBuf,
}

impl Staging {
    fn new(root: &Path) -> Result<Staging> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = root.join(format!(".import-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path)
            .with_context(|| format!("creating the staging folder {}", path.display()))?;
        Ok(Staging { path })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Best effort: on an error path the original error matters more.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hash: Sha256::new(),
        }
    }
    fn hex(self) -> String {
        hex::encode(self.hash.finalize())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One member of an export: a zip entry or a file under the folder.
#[derive(Debug, Clone)]
struct Member {
    /// `/` separated, as in the zip.
    name: String,
    /// Declared (zip header) or actual (folder) size.
    size: u64,
    is_dir: bool,
    /// Zip entry number, or the file's path in a folder export.
    loc: Loc,
}

#[derive(Debug, Clone)]
enum Loc {
    Zip(usize),
    File(PathBuf),
}

/// An opened export whose structure passed every check.
struct Export {
    origin: String,
    zip: Option<zip::ZipArchive<File>>,
    members: Vec<Member>,
}

impl Export {
    fn open(input: &Path) -> Result<Export> {
        let origin = input.display().to_string();
        let meta = std::fs::symlink_metadata(input)
            .with_context(|| format!("reading {origin}; is the path right?"))?;
        let (zip, members) = if meta.is_dir() {
            (None, folder_members(input)?)
        } else if meta.is_file() {
            let f = File::open(input).with_context(|| format!("opening {origin}"))?;
            let mut z = zip::ZipArchive::new(f).map_err(|e| {
                anyhow!("{origin} is not a readable zip ({e}); pass the zip the export script wrote, or its unpacked folder")
            })?;
            let m = zip_members(&mut z).with_context(|| format!("{origin}: refused"))?;
            (Some(z), m)
        } else {
            bail!("{origin} is neither a file nor a folder (a symlink?); pass the export itself");
        };
        let mut seen = BTreeSet::new();
        let mut total = 0u64;
        for m in &members {
            // Folded to lowercase: Windows would see `A` and `a` as one
            // file, so two of them is an ambiguity we do not resolve.
            if !seen.insert(m.name.to_lowercase()) {
                bail!(
                    "{origin}: member {:?} appears twice (names compared without case); re-export",
                    m.name
                );
            }
            total = total.saturating_add(m.size);
        }
        if total > MAX_TOTAL {
            bail!("{origin}: members add up to {total} bytes, over the {MAX_TOTAL}-byte limit; export fewer files at a time");
        }
        Ok(Export {
            origin,
            zip,
            members,
        })
    }

    fn member(&self, name: &str) -> Option<&Member> {
        self.members
            .iter()
            .find(|m| !m.is_dir && m.name.eq_ignore_ascii_case(name))
    }

    fn manifest(&mut self) -> Result<ExportManifest> {
        let Some(m) = self.member(MANIFEST).cloned() else {
            bail!(
                "{}: no {MANIFEST}; is this an export from scripts/export-known-good.ps1?",
                self.origin
            );
        };
        let origin = self.origin.clone();
        let mut buf = Vec::new();
        self.open_member(&m)?
            .take(MAX_MANIFEST + 1)
            .read_to_end(&mut buf)
            .with_context(|| format!("{origin}: reading {MANIFEST}"))?;
        if buf.len() as u64 > MAX_MANIFEST {
            bail!("{}: {MANIFEST} is over {MAX_MANIFEST} bytes", self.origin);
        }
        let text = std::str::from_utf8(&buf).map_err(|_| {
            anyhow!(
                "{}: {MANIFEST} is not UTF-8; re-export with the script",
                self.origin
            )
        })?;
        parse_manifest(text, &format!("{}: {MANIFEST}", self.origin))
    }

    fn open_member(&mut self, m: &Member) -> Result<Box<dyn Read + '_>> {
        Ok(match &m.loc {
            Loc::Zip(i) => {
                let z = self
                    .zip
                    .as_mut()
                    .ok_or_else(|| anyhow!("internal: zip member without a zip"))?;
                // The raw (still compressed) bytes, inflated here rather
                // than by the zip crate, so the bytes really taken from
                // the archive can be counted against the bytes produced:
                // the sizes in the zip's headers are the attacker's word.
                // The zip's CRC-32 goes unchecked; the manifest's SHA-256
                // is checked on every file instead.
                let raw = z
                    .by_index_raw(*i)
                    .with_context(|| format!("opening zip member {}", m.name))?;
                let method = raw.compression();
                let consumed = Rc::new(Cell::new(0u64));
                let counted = CountingBufRead {
                    inner: BufReader::new(raw),
                    consumed: Rc::clone(&consumed),
                };
                let inner: Box<dyn Read + '_> = match method {
                    zip::CompressionMethod::Stored => Box::new(counted),
                    zip::CompressionMethod::Deflated => {
                        Box::new(flate2::bufread::DeflateDecoder::new(counted))
                    }
                    other => bail!(
                        "member {:?} uses compression {other:?}; only stored and deflate are accepted",
                        m.name
                    ),
                };
                Box::new(RatioGuard {
                    inner,
                    consumed,
                    produced: 0,
                })
            }
            Loc::File(p) => {
                // The folder may have changed since it was listed: re-check
                // that this is still a plain file, not a new symlink.
                let meta = std::fs::symlink_metadata(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                if !meta.is_file() {
                    bail!("{} is no longer a plain file", p.display());
                }
                Box::new(File::open(p).with_context(|| format!("opening {}", p.display()))?)
            }
        })
    }

    /// Streams member `name` into a new file at `dest`, at most `limit`
    /// bytes plus one (so an oversized member shows), fsyncs it, and
    /// returns the bytes read and their SHA-256.
    fn copy_member(&mut self, name: &str, limit: u64, dest: &Path) -> Result<(u64, String)> {
        let m = self
            .member(name)
            .cloned()
            .ok_or_else(|| anyhow!("no member {name}"))?;
        let out = File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
        let mut w = HashingWriter::new(out);
        let n = std::io::copy(&mut self.open_member(&m)?.take(limit + 1), &mut w)
            .with_context(|| format!("copying {name} (damaged or truncated?)"))?;
        w.inner
            .sync_all()
            .with_context(|| format!("syncing {}", dest.display()))?;
        Ok((n, w.hex()))
    }
}

/// A `BufRead` that counts the bytes its reader consumes: for an inflater
/// reading through `fill_buf`/`consume`, exactly the compressed bytes it
/// used, however the archive's headers describe them.
struct CountingBufRead<R> {
    inner: R,
    consumed: Rc<Cell<u64>>,
}

impl<R: BufRead> Read for CountingBufRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed.set(self.consumed.get() + n as u64);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for CountingBufRead<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        self.consumed.set(self.consumed.get() + amt as u64);
        self.inner.consume(amt);
    }
}

/// Refuses a member mid-stream once it has produced more than
/// [`RATIO_FLOOR`] bytes at over [`MAX_RATIO`] bytes out per byte in, so a
/// bomb is stopped after a bounded amount of output whatever its headers
/// claim. Nothing is allocated from a declared size.
struct RatioGuard<R> {
    inner: R,
    consumed: Rc<Cell<u64>>,
    produced: u64,
}

impl<R: Read> Read for RatioGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.produced += n as u64;
        let consumed = self.consumed.get().max(1);
        if self.produced > RATIO_FLOOR && self.produced / consumed > MAX_RATIO {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "expands {}:1 ({consumed} compressed bytes gave {} bytes so far): a zip bomb, not a system file",
                    self.produced / consumed,
                    self.produced
                ),
            ));
        }
        Ok(n)
    }
}

/// Parses the manifest; errors carry line and column.
pub fn parse_manifest(text: &str, origin: &str) -> Result<ExportManifest> {
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    serde_json::from_str(text).map_err(|e| {
        anyhow!(
            "{origin}:{}:{}: {e}; re-export with scripts/export-known-good.ps1",
            e.line(),
            e.column()
        )
    })
}

/// Checks the manifest against itself and against the export's members.
fn check_manifest(m: &ExportManifest, members: &[Member]) -> Result<()> {
    if m.schema != EXPORT_SCHEMA {
        bail!(
            "schema {} is not supported (this defib reads {EXPORT_SCHEMA}); use a matching export script",
            m.schema
        );
    }
    if m.product.trim().is_empty() || m.build == 0 {
        bail!("product and build must be set");
    }
    if m.files.is_empty() {
        bail!("lists no files");
    }
    // These strings end up in the index and on terminals (`store list`,
    // import warnings). Windows allows no control characters in names,
    // and the registry values the script reads have none either.
    let texts = [
        ("product", Some(&m.product)),
        ("service_pack", m.service_pack.as_ref()),
        ("computer", m.computer.as_ref()),
        ("exported", Some(&m.exported)),
    ];
    let files = m.files.iter().flat_map(|f| {
        [
            ("path", Some(&f.path)),
            ("file_version", f.file_version.as_ref()),
        ]
    });
    for (key, text) in texts.into_iter().chain(files) {
        if let Some(t) = text.filter(|t| t.chars().any(char::is_control)) {
            bail!("{key} {t:?} has control characters; re-export with the script");
        }
    }
    let mut paths = BTreeSet::new();
    let mut used = BTreeMap::new();
    for f in &m.files {
        let parts = split_path(&f.path).with_context(|| format!("file {:?}", f.path))?;
        if parts.iter().any(|p| p.contains(['*', '?'])) {
            bail!("file {:?}: wildcards are not allowed", f.path);
        }
        if !paths.insert(path_key(&f.path)) {
            bail!(
                "file {:?} is listed twice (paths compared without case)",
                f.path
            );
        }
        if !is_sha256(&f.sha256.to_ascii_lowercase()) {
            bail!(
                "file {:?}: sha256 {:?} is not 64 hex digits",
                f.path,
                f.sha256
            );
        }
        if f.size > MAX_FILE {
            bail!(
                "file {:?}: {} bytes is over the {MAX_FILE}-byte limit",
                f.path,
                f.size
            );
        }
        check_member_name(&f.zip_path).with_context(|| format!("file {:?}: zip_path", f.path))?;
        if f.zip_path.eq_ignore_ascii_case(MANIFEST) {
            bail!("file {:?}: zip_path names the manifest itself", f.path);
        }
        let key = f.zip_path.to_lowercase();
        if let Some(other) = used.insert(key, f.path.clone()) {
            bail!(
                "files {other:?} and {:?} share zip_path {:?}",
                f.path,
                f.zip_path
            );
        }
        let member = members
            .iter()
            .find(|x| !x.is_dir && x.name.eq_ignore_ascii_case(&f.zip_path))
            .ok_or_else(|| {
                anyhow!(
                    "file {:?}: the export has no member {:?}; it is incomplete, re-export it",
                    f.path,
                    f.zip_path
                )
            })?;
        if member.size != f.size {
            bail!(
                "file {:?}: member {:?} is {} bytes, the manifest says {}; re-export",
                f.path,
                f.zip_path,
                member.size,
                f.size
            );
        }
    }
    // Members the manifest does not vouch for are refused, not skipped: an
    // export is written by the script alone, so an extra file means it was
    // edited by hand or is not what it claims to be.
    for x in members.iter().filter(|x| !x.is_dir) {
        if !x.name.eq_ignore_ascii_case(MANIFEST) && !used.contains_key(&x.name.to_lowercase()) {
            bail!(
                "member {:?} is not listed in {MANIFEST}; exports must come unedited from the script",
                x.name
            );
        }
    }
    Ok(())
}

/// A member name we accept: `/` separated, relative, no `.`/`..`/empty
/// components, no `\` (Windows tools split on it, so `a\..\..\x` would
/// escape), no `:` (drive letters, NTFS streams), no control characters.
pub fn check_member_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME {
        bail!(
            "name of {} bytes; names are 1 to {MAX_NAME} bytes",
            name.len()
        );
    }
    if name.chars().any(|c| c.is_control()) {
        bail!("{name:?} has control characters");
    }
    if name.contains('\\') {
        bail!("{name:?} has a backslash; zip names use '/', and '\\' could hide '..' from us");
    }
    if name.contains(':') {
        bail!("{name:?} has ':' (a drive letter or stream); names are relative");
    }
    if name.starts_with('/') {
        bail!("{name:?} is absolute");
    }
    let body = name.strip_suffix('/').unwrap_or(name);
    for c in body.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            bail!("{name:?} has an empty, '.' or '..' component (path traversal)");
        }
    }
    Ok(())
}

fn zip_members(z: &mut zip::ZipArchive<File>) -> Result<Vec<Member>> {
    if z.len() > MAX_MEMBERS {
        bail!(
            "{} members, more than the {MAX_MEMBERS} an export can have",
            z.len()
        );
    }
    if z.has_duplicate_names() {
        bail!("the zip lists one name twice; re-export");
    }
    let mut out = Vec::new();
    for i in 0..z.len() {
        let e = z
            .by_index_data(i)
            .with_context(|| format!("reading the header of member {i}"))?;
        let name = e
            .name()
            .map_err(|err| anyhow!("member {i} has an unreadable name: {err}"))?
            .to_string();
        check_member_name(&name).with_context(|| format!("member {i}"))?;
        if e.encrypted() {
            bail!("member {name:?} is encrypted; export again without a password");
        }
        // Checked on the raw attributes too, whatever host the zip claims
        // to come from: a link is refused, never followed or stored.
        if e.is_symlink() || (e.external_attributes() >> 16) & S_IFMT == S_IFLNK {
            bail!("member {name:?} is a symbolic link; exports hold plain files only");
        }
        let is_dir = e.is_dir();
        let size = e.size();
        if !is_dir {
            match e.compression() {
                zip::CompressionMethod::Stored | zip::CompressionMethod::Deflated => {}
                other => bail!("member {name:?} uses compression {other:?}; only stored and deflate are accepted"),
            }
            if size > MAX_FILE {
                bail!("member {name:?} says it is {size} bytes, over the {MAX_FILE}-byte limit");
            }
            // A first filter on the declared sizes; they can lie, so
            // RatioGuard measures the real ratio while inflating.
            if size > RATIO_FLOOR && size / e.compressed_size().max(1) > MAX_RATIO {
                bail!(
                    "member {name:?} expands {}:1 ({} to {size} bytes): a zip bomb, not a system file",
                    size / e.compressed_size().max(1),
                    e.compressed_size()
                );
            }
        }
        out.push(Member {
            name,
            size,
            is_dir,
            loc: Loc::Zip(i),
        });
    }
    Ok(out)
}

fn folder_members(root: &Path) -> Result<Vec<Member>> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let rd = std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
        for de in rd {
            let de = de.with_context(|| format!("listing {}", dir.display()))?;
            let fname = de.file_name();
            let fname = fname
                .to_str()
                .ok_or_else(|| anyhow!("{}: a name that is not UTF-8", dir.display()))?;
            let name = format!("{prefix}{fname}");
            check_member_name(&name).with_context(|| format!("{}", de.path().display()))?;
            let meta = std::fs::symlink_metadata(de.path())
                .with_context(|| format!("reading {}", de.path().display()))?;
            if meta.file_type().is_symlink() {
                bail!(
                    "{} is a symbolic link; exports hold plain files only",
                    de.path().display()
                );
            }
            if meta.is_dir() {
                if out.len() >= MAX_MEMBERS {
                    bail!("more than {MAX_MEMBERS} members");
                }
                stack.push((de.path(), format!("{name}/")));
                continue;
            }
            if !meta.is_file() {
                bail!("{} is not a plain file", de.path().display());
            }
            if meta.len() > MAX_FILE {
                bail!(
                    "{} is {} bytes, over the {MAX_FILE}-byte limit",
                    de.path().display(),
                    meta.len()
                );
            }
            if out.len() >= MAX_MEMBERS {
                bail!("more than {MAX_MEMBERS} members");
            }
            out.push(Member {
                name,
                size: meta.len(),
                is_dir: false,
                loc: Loc::File(de.path()),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use zip::write::SimpleFileOptions;

    const SVCHOST: &[u8] = b"MZ pretend svchost.exe from XP SP3";
    const LSASS: &[u8] = b"MZ pretend lsass.exe from XP SP3";

    fn sha(data: &[u8]) -> String {
        crate::sha256_hex(data)
    }

    /// A manifest laid out exactly as export-known-good.ps1 writes it:
    /// CRLF, two-space indent, null for absent values.
    fn manifest(files: &[(&str, &[u8], &str)]) -> String {
        let nl = "\r\n";
        let entries: Vec<String> = files
            .iter()
            .map(|(path, data, zip_path)| {
                format!(
                    "    {{{nl}      \"path\": {},{nl}      \"file_version\": \"5.1.2600.5512\",{nl}      \"sha256\": \"{}\",{nl}      \"size\": {},{nl}      \"zip_path\": \"{zip_path}\"{nl}    }}",
                    serde_json::to_string(path).expect("json"),
                    sha(data),
                    data.len()
                )
            })
            .collect();
        format!(
            "{{{nl}  \"schema\": 1,{nl}  \"product\": \"Windows XP Professional\",{nl}  \"build\": 2600,{nl}  \"ubr\": null,{nl}  \"service_pack\": \"Service Pack 3\",{nl}  \"arch\": \"x86\",{nl}  \"computer\": \"REF-XP3\",{nl}  \"exported\": \"2010-04-22T09:00:00Z\",{nl}  \"files\": [{nl}{}{nl}  ]{nl}}}{nl}",
            entries.join(&format!(",{nl}"))
        )
    }

    fn zip_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let o = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in members {
            w.start_file(*name, o).expect("start");
            w.write_all(data).expect("write");
        }
        w.finish().expect("finish").into_inner()
    }

    fn good_zip() -> Vec<u8> {
        let m = manifest(&[(
            r"WINDOWS\system32\svchost.exe",
            SVCHOST,
            "files/WINDOWS/system32/svchost.exe",
        )]);
        zip_of(&[
            (MANIFEST, m.as_bytes()),
            ("files/WINDOWS/system32/svchost.exe", SVCHOST),
        ])
    }

    /// Replaces every occurrence of `from` (same length as `to`): for the
    /// hostile archives the zip writer rightly refuses to make.
    fn patch(bytes: &mut [u8], from: &[u8], to: &[u8]) {
        assert_eq!(from.len(), to.len());
        let mut n = 0;
        let mut i = 0;
        while i + from.len() <= bytes.len() {
            if &bytes[i..i + from.len()] == from {
                bytes[i..i + from.len()].copy_from_slice(to);
                n += 1;
                i += from.len();
            } else {
                i += 1;
            }
        }
        assert!(n > 0, "pattern not found");
    }

    /// Offsets of zip records with this 4-byte signature (APPNOTE 4.3.7
    /// local header PK\3\4, 4.3.12 central header PK\1\2).
    fn records(bytes: &[u8], sig: &[u8; 4]) -> Vec<usize> {
        (0..bytes.len().saturating_sub(4))
            .filter(|&i| &bytes[i..i + 4] == sig)
            .collect()
    }

    /// Every file under `dir` with its hash: what "unchanged" means.
    fn snapshot(dir: &Path) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let rel = e
                    .path()
                    .strip_prefix(dir)
                    .expect("prefix")
                    .display()
                    .to_string();
                if e.path().is_dir() {
                    out.insert(rel, "dir".into());
                    stack.push(e.path());
                } else {
                    out.insert(rel, sha(&std::fs::read(e.path()).expect("read")));
                }
            }
        }
        out
    }

    struct Fixture {
        _t: tempfile::TempDir,
        store: PathBuf,
        dir: PathBuf,
    }

    /// A store that already holds one import (lsass.exe), so "unchanged"
    /// covers existing objects and the index too.
    fn fixture() -> Fixture {
        let t = tempfile::tempdir().expect("tempdir");
        let store = t.path().join("store");
        let m = manifest(&[(r"WINDOWS\system32\lsass.exe", LSASS, "files/lsass.exe")]);
        let z = zip_of(&[(MANIFEST, m.as_bytes()), ("files/lsass.exe", LSASS)]);
        let p = t.path().join("first.zip");
        std::fs::write(&p, z).expect("write");
        import(&p, &store).expect("first import");
        Fixture {
            dir: t.path().to_path_buf(),
            store,
            _t: t,
        }
    }

    fn refused(zip: &[u8], expect: &str) {
        let f = fixture();
        let before = snapshot(&f.store);
        let p = f.dir.join("hostile.zip");
        std::fs::write(&p, zip).expect("write");
        let err = format!("{:#}", import(&p, &f.store).expect_err("must be refused"));
        assert!(err.contains(expect), "expected {expect:?} in: {err}");
        assert_eq!(
            snapshot(&f.store),
            before,
            "store changed by a refused import"
        );
    }

    #[test]
    fn good_import_then_lookup() {
        let t = tempfile::tempdir().expect("tempdir");
        let store = t.path().join("payloads/store");
        let p = t.path().join("ref-xp-sp3.zip");
        std::fs::write(&p, good_zip()).expect("write");
        let s = import(&p, &store).expect("import");
        assert_eq!((s.files, s.objects_added, s.entries_added), (1, 1, 1));
        let st = Store::open(&store).expect("open");
        let c = st.candidates(
            2600,
            None,
            Arch::X86,
            Some("Service Pack 3"),
            r"Windows\System32\svchost.exe",
        );
        assert_eq!(c.len(), 1);
        assert_eq!(st.read_verified(c[0]).expect("read"), SVCHOST);
        assert!(c[0].source.contains("REF-XP3") && c[0].source.contains("ref-xp-sp3.zip"));
        assert_eq!(c[0].file_version.as_deref(), Some("5.1.2600.5512"));
        assert!(st.verify().expect("verify").is_clean());
        let names: Vec<_> = std::fs::read_dir(&store)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            names.len(),
            2,
            "only objects/ and index.json remain: {names:?}"
        );
        assert!(render_list(&st.index.entries).contains("svchost.exe"));
    }

    #[test]
    fn reimport_is_idempotent() {
        let f = fixture();
        let p = f.dir.join("again.zip");
        let m = manifest(&[(r"WINDOWS\system32\lsass.exe", LSASS, "files/lsass.exe")]);
        std::fs::write(
            &p,
            zip_of(&[(MANIFEST, m.as_bytes()), ("files/lsass.exe", LSASS)]),
        )
        .expect("w");
        let before = snapshot(&f.store);
        let s = import(&p, &f.store).expect("re-import");
        assert_eq!(
            (
                s.objects_added,
                s.objects_present,
                s.entries_added,
                s.entries_present
            ),
            (0, 1, 0, 1)
        );
        assert_eq!(snapshot(&f.store), before);
        // A second machine with the same file adds nothing either: same
        // claim, another source.
        std::fs::write(&p, good_zip()).expect("w");
        let s = import(&p, &f.store).expect("second file");
        assert_eq!((s.objects_added, s.entries_added), (1, 1));
        assert_eq!(Store::open(&f.store).expect("open").index.entries.len(), 2);
    }

    #[test]
    fn folder_export_and_bom() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path().join("ref-xp-sp3");
        std::fs::create_dir_all(d.join("files/WINDOWS/system32")).expect("mkdir");
        let m = manifest(&[(
            r"WINDOWS\system32\svchost.exe",
            SVCHOST,
            "files/WINDOWS/system32/svchost.exe",
        )]);
        std::fs::write(d.join(MANIFEST), format!("\u{FEFF}{m}")).expect("w");
        std::fs::write(d.join("files/WINDOWS/system32/svchost.exe"), SVCHOST).expect("w");
        let s = import(&d, &t.path().join("store")).expect("import");
        assert_eq!(s.objects_added, 1);
    }

    #[cfg(unix)]
    #[test]
    fn folder_export_with_symlink_refused() {
        let f = fixture();
        let d = f.dir.join("exp");
        std::fs::create_dir_all(d.join("files")).expect("mkdir");
        let m = manifest(&[(
            r"WINDOWS\system32\svchost.exe",
            SVCHOST,
            "files/svchost.exe",
        )]);
        std::fs::write(d.join(MANIFEST), m).expect("w");
        std::os::unix::fs::symlink("/etc/passwd", d.join("files/svchost.exe")).expect("ln");
        let before = snapshot(&f.store);
        let err = format!("{:#}", import(&d, &f.store).expect_err("refused"));
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(snapshot(&f.store), before);
    }

    #[test]
    fn first_import_failure_leaves_no_store() {
        let t = tempfile::tempdir().expect("tempdir");
        let store = t.path().join("store");
        let m = manifest(&[(
            r"WINDOWS\system32\svchost.exe",
            b"other",
            "files/svchost.exe",
        )]);
        let p = t.path().join("bad.zip");
        std::fs::write(
            &p,
            zip_of(&[(MANIFEST, m.as_bytes()), ("files/svchost.exe", SVCHOST)]),
        )
        .expect("w");
        assert!(import(&p, &store).is_err());
        assert!(
            !store.exists(),
            "a failed first import must not leave a store folder"
        );
    }

    #[test]
    fn refuses_parent_dir_traversal() {
        let m = manifest(&[(
            r"WINDOWS\system32\svchost.exe",
            SVCHOST,
            "files/svchost.exe",
        )]);
        let mut z = zip_of(&[
            (MANIFEST, m.as_bytes()),
            ("files/svchost.exe", SVCHOST),
            ("xx/evil.exe", b"x"),
        ]);
        patch(&mut z, b"xx/evil.exe", b"../evil.exe");
        refused(&z, "path traversal");
    }

    #[test]
    fn refuses_absolute_name() {
        let m = manifest(&[(
            r"WINDOWS\system32\svchost.exe",
            SVCHOST,
            "files/WINDOWS/system32/svchost.exe",
        )]);
        let mut z = zip_of(&[
            (MANIFEST, m.as_bytes()),
            ("files/WINDOWS/system32/svchost.exe", SVCHOST),
            ("Xetc/passwd", b"x"),
        ]);
        patch(&mut z, b"Xetc/passwd", b"/etc/passwd");
        refused(&z, "is absolute");
    }

    #[test]
    fn refuses_drive_letter() {
        let m = manifest(&[(
            r"WINDOWS\system32\svchost.exe",
            SVCHOST,
            "files/svchost.exe",
        )]);
        let mut z = zip_of(&[
            (MANIFEST, m.as_bytes()),
            ("files/svchost.exe", SVCHOST),
            ("Cq/evil.exe", b"x"),
        ]);
        patch(&mut z, b"Cq/evil.exe", b"C:/evil.exe");
        refused(&z, "drive letter");
    }

    #[test]
    fn refuses_backslash_names() {
        let m = manifest(&[(
            r"WINDOWS\system32\svchost.exe",
            SVCHOST,
            "files/svchost.exe",
        )]);
        let mut z = zip_of(&[
            (MANIFEST, m.as_bytes()),
            ("files/svchost.exe", SVCHOST),
            ("filesQzzQzzQevil", b"x"),
        ]);
        patch(&mut z, b"filesQzzQzzQevil", b"files\\..\\..\\evil");
        refused(&z, "backslash");
    }

    #[test]
    fn refuses_symlink_member() {
        let m = manifest(&[(
            r"WINDOWS\system32\svchost.exe",
            SVCHOST,
            "files/svchost.exe",
        )]);
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let o = SimpleFileOptions::default();
        w.start_file(MANIFEST, o).expect("start");
        w.write_all(m.as_bytes()).expect("w");
        w.add_symlink("files/svchost.exe", "/etc/passwd", o)
            .expect("symlink");
        let z = w.finish().expect("finish").into_inner();
        refused(&z, "symbolic link");
    }

    #[test]
    fn refuses_encrypted_member() {
        let mut z = good_zip();
        // General-purpose flag bit 0 = encrypted (APPNOTE 4.4.4): at +6 in
        // local headers, +8 in central headers.
        for off in records(&z, b"PK\x03\x04") {
            z[off + 6] |= 1;
        }
        for off in records(&z, b"PK\x01\x02") {
            z[off + 8] |= 1;
        }
        refused(&z, "encrypted");
    }

    #[test]
    fn refuses_case_insensitive_duplicates() {
        let m = manifest(&[(
            r"WINDOWS\system32\svchost.exe",
            SVCHOST,
            "files/svchost.exe",
        )]);
        let z = zip_of(&[
            (MANIFEST, m.as_bytes()),
            ("files/svchost.exe", SVCHOST),
            ("files/SVCHOST.exe", b"evil"),
        ]);
        refused(&z, "appears twice");
    }

    #[test]
    fn refuses_exact_duplicates() {
        let m = manifest(&[(
            r"WINDOWS\system32\svchost.exe",
            SVCHOST,
            "files/svchost.exe",
        )]);
        let mut z = zip_of(&[
            (MANIFEST, m.as_bytes()),
            ("files/svchost.exe", SVCHOST),
            ("files/svchosX.exe", b"evil"),
        ]);
        patch(&mut z, b"files/svchosX.exe", b"files/svchost.exe");
        refused(&z, "twice");
    }

    #[test]
    fn refuses_declared_size_over_cap() {
        let mut z = good_zip();
        // Central header: uncompressed size at +24 (APPNOTE 4.3.12).
        let name = b"files/WINDOWS/system32/svchost.exe";
        let off = records(&z, b"PK\x01\x02")
            .into_iter()
            .find(|&o| z[o + 46..].starts_with(name))
            .expect("central header");
        z[off + 24..off + 28].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
        refused(&z, "over the 536870912-byte limit");
    }

    #[test]
    fn refuses_zip_bomb() {
        let zeros = vec![0u8; 8 << 20];
        let m = manifest(&[(r"WINDOWS\system32\svchost.exe", &zeros, "files/svchost.exe")]);
        let z = zip_of(&[(MANIFEST, m.as_bytes()), ("files/svchost.exe", &zeros)]);
        assert!(z.len() < 64 << 10);
        refused(&z, "zip bomb");
    }

    #[test]
    fn zip_bomb_with_lying_compressed_size_is_refused_while_streaming() {
        // 8 MiB of zeros deflate to about 8 KiB (1000:1). The headers are
        // patched to claim 8 MiB compressed, a harmless-looking 1:1, so
        // only the bytes actually read can tell.
        let zeros = vec![0u8; 8 << 20];
        let m = manifest(&[(r"WINDOWS\system32\svchost.exe", &zeros, "files/svchost.exe")]);
        let mut z = zip_of(&[(MANIFEST, m.as_bytes()), ("files/svchost.exe", &zeros)]);
        let name = b"files/svchost.exe";
        let lie = (8u32 << 20).to_le_bytes();
        // Compressed size: +18 in a local header (APPNOTE 4.3.7), +20 in
        // a central header (4.3.12); names at +30 and +46.
        let mut patched = 0;
        for off in records(&z, b"PK\x03\x04") {
            if z[off + 30..].starts_with(name) {
                z[off + 18..off + 22].copy_from_slice(&lie);
                patched += 1;
            }
        }
        for off in records(&z, b"PK\x01\x02") {
            if z[off + 46..].starts_with(name) {
                z[off + 20..off + 24].copy_from_slice(&lie);
                patched += 1;
            }
        }
        assert_eq!(patched, 2);
        refused(&z, "zip bomb");
    }

    #[test]
    fn honest_deflate_member_imports_through_the_ratio_guard() {
        // Compressible but not a bomb: PE-like text repeats, well under
        // 200:1, and over the 1 MiB floor so the guard is exercised.
        let data: Vec<u8> = (0..3u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 % 16 + b'a')
            .collect();
        let m = manifest(&[(r"WINDOWS\system32\big.dll", &data, "files/big.dll")]);
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("x.zip");
        std::fs::write(
            &p,
            zip_of(&[(MANIFEST, m.as_bytes()), ("files/big.dll", &data)]),
        )
        .expect("w");
        let s = import(&p, &t.path().join("store")).expect("import");
        assert_eq!(s.objects_added, 1);
    }

    const WINLOGON: &[u8] = b"MZ pretend winlogon.exe from XP SP3";

    /// An export of svchost, winlogon and lsass (the fixture's file).
    fn three_file_zip(lsass: &[u8]) -> Vec<u8> {
        let m = manifest(&[
            (
                r"WINDOWS\system32\svchost.exe",
                SVCHOST,
                "files/svchost.exe",
            ),
            (
                r"WINDOWS\system32\winlogon.exe",
                WINLOGON,
                "files/winlogon.exe",
            ),
            (r"WINDOWS\system32\lsass.exe", LSASS, "files/lsass.exe"),
        ]);
        zip_of(&[
            (MANIFEST, m.as_bytes()),
            ("files/svchost.exe", SVCHOST),
            ("files/winlogon.exe", WINLOGON),
            ("files/lsass.exe", lsass),
        ])
    }

    /// Imports with a failure injected at the `n`-th pass through `point`;
    /// the store must come out exactly as it went in.
    fn fails_cleanly(f: &Fixture, zip: &[u8], point: &'static str, n: usize) {
        let before = snapshot(&f.store);
        let p = f.dir.join("export.zip");
        std::fs::write(&p, zip).expect("write");
        FAIL_AT.set(Some((point, n)));
        let err = import(&p, &f.store).map(|_| ()).expect_err("must fail");
        FAIL_AT.set(None);
        assert!(format!("{err:#}").contains("injected failure"), "{err:#}");
        assert_eq!(
            snapshot(&f.store),
            before,
            "a failed import changed the store ({point} #{n})"
        );
    }

    #[test]
    fn failed_import_after_some_objects_leaves_no_orphan() {
        // Two new objects; the second rename fails after the first one
        // was already in objects/.
        let f = fixture();
        fails_cleanly(&f, &three_file_zip(LSASS), "object", 1);
        // And the last step before the index: both objects placed.
        fails_cleanly(&f, &three_file_zip(LSASS), "index", 0);
        // The same export then imports whole.
        let p = f.dir.join("export.zip");
        let s = import(&p, &f.store).expect("import");
        assert_eq!((s.objects_added, s.objects_present), (2, 1));
        let r = Store::open(&f.store)
            .expect("open")
            .verify()
            .expect("verify");
        assert!(r.is_clean(), "{r:?}");
    }

    #[test]
    fn failed_import_puts_back_a_corrupt_object_it_was_replacing() {
        let f = fixture();
        let lsass = f.store.join(OBJECTS_DIR).join(sha(LSASS));
        std::fs::write(&lsass, b"bit rot").expect("corrupt");
        fails_cleanly(&f, &three_file_zip(LSASS), "index", 0);
        assert_eq!(std::fs::read(&lsass).expect("read"), b"bit rot");
    }

    #[test]
    fn later_member_hash_mismatch_leaves_no_orphan() {
        let f = fixture();
        let before = snapshot(&f.store);
        let p = f.dir.join("export.zip");
        let mut evil = LSASS.to_vec();
        evil[0] = b'Z';
        std::fs::write(&p, three_file_zip(&evil)).expect("write");
        let err = format!("{:#}", import(&p, &f.store).expect_err("refused"));
        assert!(err.contains("the manifest says"), "{err}");
        assert_eq!(snapshot(&f.store), before);
    }

    #[test]
    fn object_slot_that_is_a_folder_is_refused_not_replaced() {
        let f = fixture();
        let slot = f.store.join(OBJECTS_DIR).join(sha(SVCHOST));
        std::fs::create_dir(&slot).expect("mkdir");
        std::fs::write(slot.join("keep.txt"), b"someone's file").expect("w");
        let before = snapshot(&f.store);
        let p = f.dir.join("export.zip");
        std::fs::write(&p, three_file_zip(LSASS)).expect("write");
        let err = format!("{:#}", import(&p, &f.store).expect_err("refused"));
        assert!(err.contains("not a regular file"), "{err}");
        assert_eq!(snapshot(&f.store), before);
    }

    #[test]
    fn refuses_control_characters_in_manifest_text() {
        let m = manifest(&[(
            "WINDOWS\\system32\\\u{1b}[2Jsvchost.exe",
            SVCHOST,
            "files/svchost.exe",
        )]);
        let z = zip_of(&[(MANIFEST, m.as_bytes()), ("files/svchost.exe", SVCHOST)]);
        refused(&z, "control characters");
        let m = manifest(&[(
            r"WINDOWS\system32\svchost.exe",
            SVCHOST,
            "files/svchost.exe",
        )])
        .replace(
            "Windows XP Professional",
            "Windows XP\\u001b]0;owned\\u0007",
        );
        let z = zip_of(&[(MANIFEST, m.as_bytes()), ("files/svchost.exe", SVCHOST)]);
        refused(
            &z,
            "product \"Windows XP\\u{1b}]0;owned\\u{7}\" has control characters",
        );
    }

    #[test]
    fn store_list_escapes_what_the_index_holds() {
        let mut e = Entry {
            name: Some("\u{1b}[31mEXTRA.DAT".into()),
            product: "p".into(),
            build: None,
            ubr_min: None,
            ubr_max: None,
            service_pack: None,
            arch: None,
            path: "a\u{9b}b".into(),
            file_version: None,
            sha256: "é".repeat(20),
            size: 1,
            source: String::new(),
        };
        let t = render_list(std::slice::from_ref(&e));
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        assert!(
            t.contains("\\x1b[31mEXTRA.DAT") && t.contains("a\\u{9b}b"),
            "{t}"
        );
        // A non-ASCII sha256 in a hand-edited index: no byte slicing.
        e.sha256 = "ab".into();
        render_list(&[e]);
    }

    #[test]
    fn refuses_missing_member() {
        let m = manifest(&[
            (
                r"WINDOWS\system32\svchost.exe",
                SVCHOST,
                "files/svchost.exe",
            ),
            (r"WINDOWS\system32\lsass.exe", LSASS, "files/lsass.exe"),
        ]);
        let z = zip_of(&[(MANIFEST, m.as_bytes()), ("files/svchost.exe", SVCHOST)]);
        refused(&z, "has no member \"files/lsass.exe\"");
    }

    #[test]
    fn refuses_members_not_in_manifest() {
        let m = manifest(&[(
            r"WINDOWS\system32\svchost.exe",
            SVCHOST,
            "files/svchost.exe",
        )]);
        let z = zip_of(&[
            (MANIFEST, m.as_bytes()),
            ("files/svchost.exe", SVCHOST),
            ("files/extra.dll", b"x"),
        ]);
        refused(&z, "not listed in defib-export.json");
    }

    #[test]
    fn refuses_hash_mismatch() {
        let m = manifest(&[(
            r"WINDOWS\system32\svchost.exe",
            SVCHOST,
            "files/svchost.exe",
        )]);
        let mut evil = SVCHOST.to_vec();
        evil[0] = b'Z';
        let z = zip_of(&[(MANIFEST, m.as_bytes()), ("files/svchost.exe", &evil)]);
        refused(&z, "the manifest says");
    }

    #[test]
    fn refuses_size_mismatch() {
        let m = manifest(&[(
            r"WINDOWS\system32\svchost.exe",
            SVCHOST,
            "files/svchost.exe",
        )]);
        let z = zip_of(&[(MANIFEST, m.as_bytes()), ("files/svchost.exe", b"short")]);
        refused(&z, "the manifest says");
    }

    #[test]
    fn refuses_manifest_path_traversal() {
        let m = manifest(&[(r"..\..\etc\passwd", SVCHOST, "files/svchost.exe")]);
        let z = zip_of(&[(MANIFEST, m.as_bytes()), ("files/svchost.exe", SVCHOST)]);
        refused(&z, "'..' is not allowed");
    }

    #[test]
    fn refuses_malformed_manifest_with_line() {
        let z = zip_of(&[
            (MANIFEST, b"{\n \"schema\": 1,\n \"product\": oops\n}"),
            ("files/a", b"a"),
        ]);
        refused(&z, "defib-export.json:3:");
    }

    #[test]
    fn refuses_not_a_zip_and_no_manifest() {
        refused(
            b"PK but not really a zip archive at all",
            "not a readable zip",
        );
        refused(
            &zip_of(&[("files/svchost.exe", SVCHOST)]),
            "no defib-export.json",
        );
    }

    #[test]
    fn member_name_rules() {
        for ok in [
            "files/WINDOWS/system32/svchost.exe",
            "defib-export.json",
            "files/",
        ] {
            assert!(check_member_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/x", "../x", "a/../x", "a//x", "./x", "a\\x", "C:x", "a/b:c", "a\u{0}b",
        ] {
            assert!(check_member_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn script_writes_what_the_importer_reads() {
        let script = include_str!("../../scripts/export-known-good.ps1");
        // Every field the importer knows, spelled as the script writes it.
        for field in [
            "schema",
            "product",
            "build",
            "ubr",
            "service_pack",
            "arch",
            "computer",
            "exported",
            "files",
            "path",
            "file_version",
            "sha256",
            "size",
            "zip_path",
        ] {
            assert!(
                script.contains(&format!("'\"{field}\": "))
                    || script.contains(&format!("  \"{field}\": ")),
                "the export script does not write {field:?}"
            );
        }
        assert!(script.contains(MANIFEST));
        assert!(script.contains("'files/'"), "zip paths start with files/");
        // The sample as the script lays it out parses, with XP's null UBR.
        let m = manifest(&[(
            r"WINDOWS\system32\svchost.exe",
            SVCHOST,
            "files/WINDOWS/system32/svchost.exe",
        )]);
        let parsed = parse_manifest(&m, "sample").expect("parse");
        assert_eq!(parsed.build, 2600);
        assert_eq!(parsed.ubr, None);
        assert_eq!(parsed.arch, Arch::X86);
        assert_eq!(parsed.files[0].path, r"WINDOWS\system32\svchost.exe");
        // Unknown fields are refused: a newer script needs a newer defib.
        let extra = m.replacen(
            "\"schema\": 1,",
            "\"schema\": 1, \"language\": \"0409\",",
            1,
        );
        assert!(parse_manifest(&extra, "sample").is_err());
    }
}
