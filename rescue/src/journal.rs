//! The run folder on the victim volume, `\defib\<run-id>\`: the vault of
//! everything moved or replaced, `journal.jsonl`, and the reports.
//!
//! The journal is written ahead: a step's `intent` line is on disk
//! (fsync'd) before the step touches anything, and its `done` line after the
//! result is verified. `rescue undo` replays `done` steps backwards; an
//! `intent` without `done` tells undo (and a person) exactly which file a
//! crash interrupted.
//!
//! File moves are renames within the volume (atomic on NTFS); new files
//! are written to a temporary name, fsync'd, and renamed without replacing
//! anything (RENAME_NOREPLACE), then read back and hashed.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The top folder defib keeps on a victim volume.
pub const TOP: &str = "defib";
pub const JOURNAL: &str = "journal.jsonl";
pub const VAULT: &str = "vault";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    Intent,
    Done,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// `path` moved into the vault at `vault`.
    Neutralize,
    /// A good copy written at `path`; a file that was there is in `vault`.
    Restore,
    /// A store file placed at `path`; a file that was there is in `vault`.
    DropIn,
    /// `rescue undo` put `path` back (or took it away).
    Undo,
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub seq: u32,
    pub state: StepState,
    pub op: Op,
    pub playbook: String,
    /// Volume-relative Windows path, as spelled on disk (`WINDOWS\system32\svchost.exe`).
    pub path: String,
    /// Run-folder-relative path of the backup in the vault, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256_after: Option<String>,
    /// Where a restored file came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub time: String,
}

/// An open run folder.
pub struct RunDir {
    pub root: PathBuf,
    pub dir: PathBuf,
    journal: File,
    seq: u32,
}

impl RunDir {
    /// Creates `\defib\<run_id>\` and its vault on the volume at `root`.
    pub fn create(root: &Path, run_id: &str) -> Result<RunDir> {
        let dir = root.join(TOP).join(run_id);
        if dir.exists() {
            bail!("{} already exists: run ids must be unique", dir.display());
        }
        fs::create_dir_all(dir.join(VAULT))
            .with_context(|| format!("creating {}", dir.display()))?;
        fsync_dir(root)?;
        fsync_dir(&root.join(TOP))?;
        let journal = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(dir.join(JOURNAL))
            .with_context(|| format!("creating {}", dir.join(JOURNAL).display()))?;
        fsync_dir(&dir)?;
        Ok(RunDir {
            root: root.to_path_buf(),
            dir,
            journal,
            seq: 0,
        })
    }

    /// Opens an existing run folder to append (used by undo).
    pub fn open(root: &Path, run_id: &str) -> Result<RunDir> {
        let dir = root.join(TOP).join(run_id);
        let journal = OpenOptions::new()
            .append(true)
            .open(dir.join(JOURNAL))
            .with_context(|| format!("opening {}", dir.join(JOURNAL).display()))?;
        let seq = read_journal(&dir.join(JOURNAL))?
            .iter()
            .map(|s| s.seq)
            .max()
            .unwrap_or(0);
        Ok(RunDir {
            root: root.to_path_buf(),
            dir,
            journal,
            seq,
        })
    }

    /// The next step number.
    pub fn next_seq(&mut self) -> u32 {
        self.seq += 1;
        self.seq
    }

    /// Appends one line and fsyncs it before returning.
    pub fn record(&mut self, step: &Step) -> Result<()> {
        let mut line = serde_json::to_vec(step).context("encoding a journal line")?;
        line.push(b'\n');
        self.journal
            .write_all(&line)
            .context("writing the journal")?;
        self.journal.sync_all().context("syncing the journal")?;
        Ok(())
    }

    /// Carries out one step write-ahead: the `intent` line is on disk
    /// before `act` runs; then a `done` line, or a `failed` line with the
    /// error (which is also returned).
    pub fn step(&mut self, mut step: Step, act: impl FnOnce() -> Result<()>) -> Result<()> {
        step.seq = self.next_seq();
        step.state = StepState::Intent;
        self.record(&step)?;
        let res = act();
        step.time = crate::runid::rfc3339(std::time::SystemTime::now());
        match &res {
            Ok(()) => step.state = StepState::Done,
            Err(e) => {
                step.state = StepState::Failed;
                step.error = Some(format!("{e:#}"));
            }
        }
        self.record(&step)?;
        res
    }

    /// Where the vault copy of a volume-relative path goes.
    pub fn vault_path(&self, rel: &Path) -> PathBuf {
        self.dir.join(VAULT).join(rel)
    }

    /// The run folder relative to the run dir, for journal `vault` fields.
    pub fn rel_to_run(&self, p: &Path) -> String {
        p.strip_prefix(&self.dir)
            .unwrap_or(p)
            .to_string_lossy()
            .replace('/', "\\")
    }
}

/// Reads a journal. A torn last line (a crash while writing it) is
/// ignored; any other bad line is an error naming its number.
pub fn read_journal(path: &Path) -> Result<Vec<Step>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let lines: Vec<&str> = text.split('\n').collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Step>(l) {
            Ok(s) => out.push(s),
            Err(_) if i + 1 == lines.len() => break,
            Err(e) => bail!("{}:{}: not a journal line: {e}", path.display(), i + 1),
        }
    }
    Ok(out)
}

pub use crate::hash::{sha256_file, sha256_hex as sha256_bytes};

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Renames `from` to `to` (creating `to`'s parents), refusing to replace
/// anything, and syncs both directories.
pub fn move_noreplace(from: &Path, to: &Path) -> Result<()> {
    let parent = to.parent().context("destination has no parent")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    rename_noreplace(from, to)?;
    fsync_dir(parent)?;
    if let Some(p) = from.parent() {
        fsync_dir(p)?;
    }
    Ok(())
}

fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE)
        .with_context(|| format!("moving {} to {}", from.display(), to.display()))
}

/// Writes `data` as a new file at `path` (which must not exist): temp name
/// in the same folder, fsync, rename without replacing, fsync the folder,
/// then read back and compare the SHA-256. Returns the digest.
pub fn create_verified(path: &Path, data: &[u8]) -> Result<String> {
    let dir = path.parent().context("path has no parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .context("path has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.defib-tmp"));
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let r = f
        .write_all(data)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()));
    drop(f);
    if let Err(e) = r {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = rename_noreplace(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fsync_dir(dir)?;
    let want = sha256_bytes(data);
    let got = sha256_file(path)?;
    if got != want {
        bail!(
            "{} reads back as {got}, expected {want}: the disk may be failing",
            path.display()
        );
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(seq: u32, state: StepState) -> Step {
        Step {
            seq,
            state,
            op: Op::Neutralize,
            playbook: "p".into(),
            path: r"a\b".into(),
            vault: None,
            sha256_before: None,
            sha256_after: None,
            source: None,
            error: None,
            time: "t".into(),
        }
    }

    #[test]
    fn journal_round_trip_and_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        let mut r = RunDir::create(d.path(), "run1").unwrap();
        assert_eq!(r.next_seq(), 1);
        r.record(&step(1, StepState::Intent)).unwrap();
        r.record(&step(1, StepState::Done)).unwrap();
        let p = d.path().join("defib/run1/journal.jsonl");
        assert_eq!(read_journal(&p).unwrap().len(), 2);
        // A crash mid-line leaves a torn tail: ignored.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"seq\":2,\"sta").unwrap();
        assert_eq!(read_journal(&p).unwrap().len(), 2);
        // Garbage in the middle is an error with its line number.
        fs::write(&p, "{\"x\":1}\n{}\n").unwrap();
        let e = read_journal(&p).unwrap_err().to_string();
        assert!(e.contains(":1:"), "{e}");
        assert!(
            RunDir::create(d.path(), "run1").is_err(),
            "run ids are unique"
        );
        let mut again = RunDir::open(d.path(), "run1");
        assert!(again.is_err() || again.as_mut().unwrap().next_seq() > 0);
    }

    #[test]
    fn create_verified_never_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/new.bin");
        let h = create_verified(&p, b"hello").unwrap();
        assert_eq!(h, sha256_bytes(b"hello"));
        assert_eq!(fs::read(&p).unwrap(), b"hello");
        let e = create_verified(&p, b"other").unwrap_err().to_string();
        assert!(e.contains("moving"), "{e}");
        assert_eq!(
            fs::read(&p).unwrap(),
            b"hello",
            "an existing file is never replaced"
        );
        assert_eq!(
            fs::read_dir(d.path().join("sub")).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn move_noreplace_refuses_to_clobber() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), b"a").unwrap();
        fs::write(d.path().join("b"), b"b").unwrap();
        assert!(move_noreplace(&d.path().join("a"), &d.path().join("b")).is_err());
        move_noreplace(&d.path().join("a"), &d.path().join("v/a")).unwrap();
        assert_eq!(fs::read(d.path().join("v/a")).unwrap(), b"a");
        assert!(!d.path().join("a").exists());
    }
}
