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
//! anything (RENAME_NOREPLACE), then read back from the disk (the page
//! cache dropped first) and hashed.
//!
//! A run's journal opens with a `begin` line (its number among the runs on
//! this volume) and closes with an `end` line. A run without `end` was
//! interrupted: the next run rolls it back before it looks at anything
//! (`engine::recover`), so a crash between two steps cannot leave a volume
//! that looks clean but is half repaired.
//!
//! Fault injection: with `DEFIB_FAULT=N` in the environment (host mode) or
//! `defib.fault=N` on the kernel command line, the process aborts at the
//! N-th fault point — every journal line, rename and file write has one —
//! as a power cut would stop it. Tests use it to prove that every
//! interruption converges.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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
    /// A BCD store at `path` (on the volume `volume` names) rewritten in
    /// place with one element removed; the original is in `vault`.
    Bcd,
    /// `rescue undo`, or a rollback, put `path` back (or took it away).
    Undo,
    /// The first line of a run: `run` is its number on this volume.
    Begin,
    /// The last line of a run that finished (its actions done, failed or
    /// rolled back). Without it the run was interrupted.
    End,
}

/// Which file system a journalled path is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Volume {
    /// The system partition (ESP, or the BIOS active partition).
    System,
    /// The Windows volume itself (where the journal is).
    Windows,
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
    /// The volume `path` is on when it is not the Windows volume the
    /// journal is on: `system` (the system partition, for a BCD store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<Volume>,
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
    /// On `begin` lines: the run's number among the runs on this volume,
    /// which orders runs that started in the same second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<u64>,
}

impl Step {
    /// A step of `op` on `path` for `playbook`, not yet numbered.
    pub fn new(op: Op, playbook: &str, path: &str) -> Step {
        Step {
            seq: 0,
            state: StepState::Intent,
            op,
            playbook: playbook.into(),
            path: path.into(),
            volume: None,
            vault: None,
            sha256_before: None,
            sha256_after: None,
            source: None,
            error: None,
            time: crate::runid::rfc3339(std::time::SystemTime::now()),
            run: None,
        }
    }
}

/// How an armed fault point stops the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// `abort()`: no destructor runs, nothing more is written, as with a
    /// power cut. What the binaries use.
    Abort,
    /// A panic with [`FaultInjected`] as its payload, for in-process tests
    /// that catch it and look at the volume.
    Panic,
}

/// The panic payload of a [`FaultMode::Panic`] fault.
#[derive(Debug)]
pub struct FaultInjected(pub u64);

thread_local! {
    /// (armed at, seen so far, mode). Per thread: a run's engine work is
    /// on one thread, and parallel tests must not count each other's.
    static FAULT: std::cell::Cell<(u64, u64, FaultMode)> =
        const { std::cell::Cell::new((0, 0, FaultMode::Abort)) };
}

/// Arms fault injection on this thread for the `n`-th fault point from
/// now (PID 1 passes `defib.fault=`); 0 disarms.
pub fn set_fault(n: u64, mode: FaultMode) {
    FAULT.with(|f| f.set((n, 0, mode)));
}

/// Arms fault injection from `DEFIB_FAULT` when it is set (host mode).
pub fn fault_from_env() {
    if let Some(n) = std::env::var("DEFIB_FAULT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        set_fault(n, FaultMode::Abort);
    }
}

/// One place where a power cut could stop a run. Stops there when armed
/// for it.
pub fn fault_point(what: &str) {
    let (at, seen, mode) = FAULT.with(|f| f.get());
    let n = seen + 1;
    FAULT.with(|f| f.set((at, n, mode)));
    if at != 0 && n == at {
        match mode {
            FaultMode::Abort => {
                eprintln!("defib: fault injected at point {n} ({what})");
                std::process::abort();
            }
            FaultMode::Panic => std::panic::panic_any(FaultInjected(n)),
        }
    }
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
        let top = top_dir(root)?;
        let number = run_numbers(root)?
            .into_iter()
            .map(|(n, _)| n)
            .max()
            .unwrap_or(0)
            + 1;
        let dir = top.join(run_id);
        if dir.symlink_metadata().is_ok() {
            bail!("{} already exists: run ids must be unique", dir.display());
        }
        if top.symlink_metadata().is_err() {
            fs::create_dir(&top).with_context(|| format!("creating {}", top.display()))?;
            fsync_dir(root)?;
        }
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::create_dir(dir.join(VAULT))
            .with_context(|| format!("creating {}", dir.join(VAULT).display()))?;
        fsync_dir(&top)?;
        let journal = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(dir.join(JOURNAL))
            .with_context(|| format!("creating {}", dir.join(JOURNAL).display()))?;
        fsync_dir(&dir)?;
        let mut rd = RunDir {
            root: root.to_path_buf(),
            dir,
            journal,
            seq: 0,
        };
        let mut begin = Step::new(Op::Begin, "", "");
        begin.seq = rd.next_seq();
        begin.state = StepState::Done;
        begin.run = Some(number);
        rd.record(&begin)?;
        Ok(rd)
    }

    /// Closes the run: the `end` line that says it was not interrupted.
    pub fn finish(&mut self, note: Option<String>) -> Result<()> {
        let mut end = Step::new(Op::End, "", "");
        end.seq = self.next_seq();
        end.state = StepState::Done;
        end.source = note;
        self.record(&end)
    }

    /// Opens an existing run folder to append (used by undo).
    pub fn open(root: &Path, run_id: &str) -> Result<RunDir> {
        check_run_id(run_id)?;
        let dir = top_dir(root)?.join(run_id);
        no_link(&dir)?;
        no_link(&dir.join(JOURNAL))?;
        let journal = OpenOptions::new()
            .read(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(JOURNAL))
            .with_context(|| format!("opening {}", dir.join(JOURNAL).display()))?;
        // A line torn by a crash is cut off, so the next line starts on a
        // line of its own instead of being glued to the torn one.
        cut_torn_tail(&journal)
            .with_context(|| format!("repairing {}", dir.join(JOURNAL).display()))?;
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
        // Everything the run did before this line reaches the disk first,
        // every inode and index of the volume, not only the files fsync'd
        // (see `sync_volume`).
        sync_volume(&self.journal)?;
        fault_point("journal line");
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
        fault_point("step started");
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

    /// The run's id (its folder's name).
    pub fn id(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
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
    // Bytes, not text: a line torn by a power cut may end in whatever the
    // disk held there before, which need not be UTF-8.
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.trim_ascii().is_empty() {
            continue;
        }
        match serde_json::from_slice::<Step>(l) {
            Ok(s) => out.push(s),
            Err(_) if i + 1 == lines.len() => break,
            Err(e) => bail!("{}:{}: not a journal line: {e}", path.display(), i + 1),
        }
    }
    Ok(out)
}

pub use crate::hash::{sha256_file, sha256_hex as sha256_bytes};

/// `\defib` on the volume at `root`, refusing it when it is a link (a
/// planted symlink or junction would send the vault and the journal off
/// the volume).
pub fn top_dir(root: &Path) -> Result<PathBuf> {
    let top = root.join(TOP);
    no_link(&top)?;
    Ok(top)
}

/// Refuses `p` when it is a symbolic link (ntfs3 shows NTFS junctions and
/// other name-surrogate reparse points as links too). Absent is fine.
pub fn no_link(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_symlink() => bail!(
            "{} is a link (a symlink or an NTFS junction); defib never follows links on a victim volume",
            p.display()
        ),
        _ => Ok(()),
    }
}

/// A run id as defib makes them: `YYYYMMDDTHHMMSSZ-xxxxxxxx`, or any name
/// of letters, digits, `-` and `_` (tests use short ones). Anything that
/// could name another folder (`..`, separators) is refused.
pub fn check_run_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("{id:?} is not a defib run id");
    }
    Ok(())
}

/// Every run on the volume with its number (from its `begin` line; runs of
/// older versions have none and count as 0), oldest first: by number, then
/// by id.
pub fn run_numbers(root: &Path) -> Result<Vec<(u64, String)>> {
    let top = top_dir(root)?;
    let mut v = Vec::new();
    let rd = match fs::read_dir(&top) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(e).with_context(|| format!("listing {}", top.display())),
    };
    for e in rd.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if check_run_id(&id).is_err() || no_link(&e.path()).is_err() {
            continue;
        }
        let j = e.path().join(JOURNAL);
        if no_link(&j).is_err() || !j.is_file() {
            continue;
        }
        let n = read_journal(&j)
            .ok()
            .and_then(|s| s.iter().find(|x| x.op == Op::Begin).and_then(|x| x.run))
            .unwrap_or(0);
        v.push((n, id));
    }
    v.sort();
    Ok(v)
}

/// Cuts a journal back to its last complete line.
fn cut_torn_tail(f: &File) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut r = f;
    r.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    r.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(());
    }
    // Find the last newline (journals are small: read it whole).
    let mut all = Vec::new();
    r.seek(SeekFrom::Start(0))?;
    r.read_to_end(&mut all)?;
    let keep = all.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    f.set_len(keep as u64)?;
    f.sync_all()?;
    Ok(())
}

/// SHA-256 of what the disk holds, not what the page cache remembers:
/// the file's clean cached pages are dropped (after the fsync every write
/// here does) before it is read again, so a write the medium lost or
/// garbled is seen.
pub fn sha256_from_disk(path: &Path) -> Result<String> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let _ = f.sync_all();
    // Advice, not a promise: a filesystem that keeps its pages anyway is no
    // worse than before.
    let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
    let mut f = f;
    crate::hash::sha256_reader(&mut f).with_context(|| format!("reading {}", path.display()))
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir)
        .and_then(|d| d.sync_all().map(|_| d))
        .with_context(|| format!("syncing directory {}", dir.display()))?;
    sync_volume(&d)
}

/// Writes back every change on the file system that holds `f`
/// (`syncfs`). ntfs3 keeps no journal of its own: a rename or a new file
/// touches a directory index and the file's MFT record, and an fsync of one
/// inode leaves the others in the page cache, in any order. A power cut
/// then leaves an index entry pointing at a record that never reached the
/// disk ("MFT: r=…, expect seq=…"), a file the next run cannot open. Synced
/// before each journal line and after each rename and new file, the volume
/// on the disk is whole at every step boundary; only the step under way
/// at the cut can be torn, and ntfs3's dirty flag then asks for chkdsk.
pub fn sync_volume(f: &File) -> Result<()> {
    rustix::fs::syncfs(f).context("syncing the volume (syncfs)")
}

/// Renames `from` to `to` (creating `to`'s parents), refusing to replace
/// anything, and syncs both directories.
pub fn move_noreplace(from: &Path, to: &Path) -> Result<()> {
    let parent = to.parent().context("destination has no parent")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    fault_point("rename");
    rename_noreplace(from, to)?;
    fsync_dir(parent)?;
    if let Some(p) = from.parent() {
        fsync_dir(p)?;
    }
    Ok(())
}

/// `rename(from, to)` that never replaces `to`. The kernel's flag does it
/// where the filesystem supports it (ntfs3, vfat, ext4, tmpfs); a
/// filesystem that does not (ntfs-3g through FUSE answers EINVAL) gets a
/// hard link, which never replaces either, then the old name is removed —
/// a cut between the two leaves both names on one file, never a lost one.
/// Where hard links are not possible either, the destination is checked
/// first and a plain rename follows (only this process writes the volume).
fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    use rustix::fs::{linkat, lstat, renameat, renameat_with, unlinkat, AtFlags, RenameFlags, CWD};
    use rustix::io::Errno;
    let what = || format!("moving {} to {}", from.display(), to.display());
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Err(Errno::INVAL) => {}
        r => return r.with_context(what),
    }
    match linkat(CWD, from, CWD, to, AtFlags::empty()) {
        Ok(()) => unlinkat(CWD, from, AtFlags::empty()).with_context(|| {
            format!(
                "{} (linked to the new name; the old name could not be removed)",
                what()
            )
        }),
        Err(Errno::PERM | Errno::NOTSUP | Errno::MLINK | Errno::XDEV) => match lstat(to) {
            Ok(_) => {
                Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists)).with_context(what)
            }
            Err(Errno::NOENT) => renameat(CWD, from, CWD, to).with_context(what),
            Err(e) => Err(e).with_context(what),
        },
        Err(e) => Err(e).with_context(what),
    }
}

/// The temporary name a new file is written under before it is renamed
/// into place: `.<name>.defib-tmp` beside it.
pub fn tmp_path(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_string_lossy();
    Some(path.with_file_name(format!(".{name}.defib-tmp")))
}

/// Writes `data` as a new file at `path` (which must not exist): temp name
/// in the same folder, fsync, rename without replacing, fsync the folder,
/// then read back and compare the SHA-256. Returns the digest.
pub fn create_verified(path: &Path, data: &[u8]) -> Result<String> {
    let dir = path.parent().context("path has no parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = write_temp(path, data)?;
    fault_point("rename into place");
    if let Err(e) = rename_noreplace(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fsync_dir(dir)?;
    read_back(path, data)
}

/// Replaces the file at `path` with `data`: temp name in the same folder,
/// fsync, rename over the old file (atomic: a crash leaves the old or the
/// new whole), fsync the folder, then read back from the disk and compare
/// the SHA-256. The caller has the old content in the vault already.
pub fn replace_verified(path: &Path, data: &[u8]) -> Result<String> {
    let dir = path.parent().context("path has no parent")?;
    let tmp = write_temp(path, data)?;
    fault_point("rename over");
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("renaming to {}", path.display()));
    }
    fsync_dir(dir)?;
    read_back(path, data)
}

/// `data` written to `path`'s temporary name, fsynced, and the whole
/// volume synced (ntfs3 keeps no journal: see [`sync_volume`]); the temp
/// file is removed again when any of it fails.
fn write_temp(path: &Path, data: &[u8]) -> Result<PathBuf> {
    let tmp = tmp_path(path).context("path has no file name")?;
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    fault_point("write");
    let r = f
        .write_all(data)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|_| sync_volume(&f));
    drop(f);
    if let Err(e) = r {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// The SHA-256 of `path` read back from the disk (cached pages dropped),
/// which must be that of `data`.
fn read_back(path: &Path, data: &[u8]) -> Result<String> {
    let want = sha256_bytes(data);
    let got = sha256_from_disk(path)?;
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
            volume: None,
            vault: None,
            sha256_before: None,
            sha256_after: None,
            source: None,
            error: None,
            time: "t".into(),
            run: None,
        }
    }

    #[test]
    fn journal_round_trip_and_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        let mut r = RunDir::create(d.path(), "run1").unwrap();
        // The begin line took number 1.
        assert_eq!(r.next_seq(), 2);
        r.record(&step(2, StepState::Intent)).unwrap();
        r.record(&step(2, StepState::Done)).unwrap();
        let p = d.path().join("defib/run1/journal.jsonl");
        let lines = read_journal(&p).unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!((lines[0].op, lines[0].run), (Op::Begin, Some(1)));
        // A crash mid-line leaves a torn tail: ignored.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"seq\":3,\"sta").unwrap();
        assert_eq!(read_journal(&p).unwrap().len(), 3);
        // Or a tail of what the disk held before, not even UTF-8.
        f.write_all(b"\xff\xfe\x00\x9f").unwrap();
        assert_eq!(read_journal(&p).unwrap().len(), 3);
        // Reopened to go on (undo, recovery), the torn line is cut first:
        // the next line is not glued to it.
        let mut again = RunDir::open(d.path(), "run1").unwrap();
        again.record(&step(3, StepState::Done)).unwrap();
        assert_eq!(read_journal(&p).unwrap().len(), 4);
        // A second run on the volume gets the next number.
        RunDir::create(d.path(), "run0").unwrap();
        let order: Vec<String> = run_numbers(d.path())
            .unwrap()
            .into_iter()
            .map(|x| x.1)
            .collect();
        assert_eq!(order, ["run1", "run0"], "by number, not by id");
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
