//! The kernel side of Windows volumes: read the raw device, mount it with
//! ntfs3 under `/run/defib/vol/<dev>`, unmount; open a BitLocker volume
//! with the run's keys and map it with dm-crypt (`defib-<dev>`), remove
//! the mapping. Deliberately thin; the decisions are in `repair`, the
//! BitLocker format in `bitlocker`, the ioctls in `devmapper`.

use crate::bitlocker::keyfile::KeyStore;
use crate::repair::VolumeOps;
use crate::report::BitlockerState;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct KernelVolumes {
    root: PathBuf,
    mounted: BTreeMap<String, PathBuf>,
    /// dm names of the BitLocker volumes this run mapped.
    mapped: Vec<String>,
    /// Keys for BitLocker volumes: key files from the stick, the command
    /// line (host mode), or typed.
    pub keys: crate::bitlocker::keyfile::KeyStore,
    /// Asks a person for a recovery password for a volume no key file
    /// opened (PID 1's console prompt); `None` when nobody can be asked.
    #[allow(clippy::type_complexity)]
    pub prompt: Option<Box<dyn FnMut(&str, &crate::bitlocker::Metadata) -> Option<Typed>>>,
    /// Hash each mapped plain device into the report.
    pub hash_unlocked: bool,
    /// Fetches keys for a volume the loaded keys did not open (PID 1's
    /// `defib.keys=`), adding them to the store; tried before the prompt.
    pub fetch: Option<KeyFetch>,
    /// Lines for the screen since the caller last took them (unlock
    /// timings, key fetches).
    pub lines: Vec<String>,

    /// Asks a person for the passphrase of the sealed key files in `keys`
    /// (volume, file names, a notice to show first); `None` when nobody
    /// can be asked.
    #[allow(clippy::type_complexity)]
    pub passphrase: Option<Box<dyn FnMut(&str, &[String], Option<&str>) -> Passphrase>>,
    /// The largest scrypt work factor a sealed file may ask for here
    /// (bounded by the machine's memory).
    pub max_work_factor: u8,
    /// The passphrase was asked for already: once per boot.
    sealed_asked: bool,
    /// Lines for the report (sealed files opened or not), never with a
    /// key or passphrase; the caller drains them.
    pub notes: Vec<String>,
    /// Shows a note to the person at the PC as it happens.
    #[allow(clippy::type_complexity)]
    pub tell: Option<Box<dyn FnMut(&str)>>,
}

/// A key source asked per locked volume (see [`KernelVolumes::fetch`]).
pub type KeyFetch = Box<dyn FnMut(&str, &crate::bitlocker::Metadata, &mut KeyStore) -> Fetched>;

/// What a key fetch gave: progress lines and failures (never a key).
#[derive(Debug, Default)]
pub struct Fetched {
    pub lines: Vec<String>,
    pub problems: Vec<String>,
}

/// What a person typed for a volume.
pub enum Typed {
    /// 48 digits whose groups all passed the check.
    RecoveryPassword(crate::bitlocker::RecoveryPassword),
    /// Anything else, on a volume with a password protector; wiped on drop.
    Password(zeroize::Zeroizing<String>),
}

impl Typed {
    /// What to try, and the report's `key_source` when it opens the volume.
    fn credential(self) -> (crate::bitlocker::Credential, &'static str) {
        use crate::bitlocker::{Credential, PasswordKey};
        match self {
            Typed::RecoveryPassword(rp) => (Credential::RecoveryPassword(rp), "typed"),
            Typed::Password(p) => (Credential::Password(PasswordKey::new(&p)), "password"),
        }
    }
}

/// The answer to the sealed key files' passphrase prompt.
pub enum Passphrase {
    /// Wiped on drop.
    Typed(zeroize::Zeroizing<String>),
    /// Enter on an empty line.
    Skipped,
    /// Nobody typed within the bound (or nobody can be asked).
    TimedOut,
}

/// How asking for the sealed files' passphrase ended.
#[derive(Debug, PartialEq, Eq)]
enum SealedOutcome {
    /// At least one sealed file opened with it.
    Opened,
    /// Skipped, or no passphrase opened any file within the tries.
    NotOpened,
    /// Nobody at the console: do not ask anything else for this volume.
    NobodyThere,
}

/// Wrong passphrases allowed before going on without the sealed files.
const PASSPHRASE_TRIES: u32 = 3;

impl KernelVolumes {
    pub fn new(root: &Path) -> KernelVolumes {
        KernelVolumes {
            root: root.to_path_buf(),
            mounted: BTreeMap::new(),
            mapped: Vec::new(),
            keys: Default::default(),
            prompt: None,
            hash_unlocked: false,
            fetch: None,
            lines: Vec::new(),
            notes: Vec::new(),
            passphrase: None,
            max_work_factor: crate::bitlocker::sealed::MAX_WORK_FACTOR,
            sealed_asked: false,
            tell: None,
        }
    }

    /// Asks for the sealed key files' passphrase, once per run, and opens
    /// every sealed file with it; a passphrase that opens none is asked
    /// again, [`PASSPHRASE_TRIES`] times in all.
    fn open_sealed(&mut self, dev: &str) -> SealedOutcome {
        use crate::bitlocker::sealed::SealError;
        if self.sealed_asked || self.keys.sealed.is_empty() {
            return SealedOutcome::NotOpened;
        }
        self.sealed_asked = true;
        let Some(ask) = self.passphrase.as_mut() else {
            return SealedOutcome::NotOpened;
        };
        let mut notice: Option<String> = None;
        for attempt in 1..=PASSPHRASE_TRIES {
            let files: Vec<String> = self.keys.sealed.iter().map(|f| f.name.clone()).collect();
            let pass = match ask(dev, &files, notice.as_deref()) {
                Passphrase::Typed(p) => p,
                Passphrase::Skipped => return SealedOutcome::NotOpened,
                Passphrase::TimedOut => return SealedOutcome::NobodyThere,
            };
            let results = self.keys.open_sealed(&pass, self.max_work_factor);
            drop(pass);
            let all_wrong = results
                .iter()
                .all(|(_, r)| *r == Err(SealError::WrongPassphrase));
            if all_wrong {
                notice = Some(format!(
                    "That passphrase opens none of the sealed key files (try {attempt} of {PASSPHRASE_TRIES})."
                ));
                continue;
            }
            let mut opened = false;
            for (name, r) in results {
                let note = match r {
                    Ok(n) => {
                        opened = true;
                        format!("sealed key file {name}: opened, {n} key(s)")
                    }
                    Err(e) => format!("sealed key file {name}: {e}"),
                };
                if let Some(t) = self.tell.as_mut() {
                    t(&note);
                }
                self.notes.push(note);
            }
            return if opened {
                SealedOutcome::Opened
            } else {
                SealedOutcome::NotOpened
            };
        }
        let note = format!(
            "sealed key files ({}): {PASSPHRASE_TRIES} passphrases typed, none opened them",
            self.keys
                .sealed
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(t) = self.tell.as_mut() {
            t(&note);
        }
        self.notes.push(note);
        SealedOutcome::NotOpened
    }

    fn dev(&self, dev: &str) -> PathBuf {
        if dev.starts_with('/') {
            PathBuf::from(dev)
        } else {
            self.root.join("dev").join(dev)
        }
    }

    fn open(&self, dev: &str) -> Result<std::fs::File> {
        let p = self.dev(dev);
        std::fs::File::open(&p).with_context(|| format!("opening {}", p.display()))
    }

    /// Unmounts everything still mounted, syncing first.
    pub fn umount_all(&mut self) -> Vec<String> {
        let mut errs = Vec::new();
        let names: Vec<String> = self.mounted.keys().cloned().collect();
        for n in names {
            if let Err(e) = self.umount(&n) {
                errs.push(format!("{e:#}"));
            }
        }
        // Then every BitLocker mapping: the PC boots with its TPM as before.
        for m in std::mem::take(&mut self.mapped) {
            if let Err(e) = crate::devmapper::remove(&self.root, &m) {
                errs.push(format!("{e:#}"));
            }
        }
        errs
    }

    /// The size of a block device (or file) in bytes.
    fn size(&self, dev: &str) -> Result<u64> {
        use std::io::Seek;
        let mut f = self.open(dev)?;
        Ok(f.seek(std::io::SeekFrom::End(0))?)
    }
}

/// Tries only the keys added to `keys` since `before` (the older ones were
/// refused already: each recovery password costs a full key stretch), and
/// updates `opened`: opened, or "wrong key" rather than "no key" when the
/// new keys were for this volume and did not open it.
fn try_fresh(
    meta: &crate::bitlocker::Metadata,
    keys: &KeyStore,
    before: usize,
    opened: &mut std::result::Result<
        (crate::bitlocker::Unlocked, &'static str),
        crate::bitlocker::UnlockError,
    >,
) {
    let fresh = KeyStore {
        records: keys.records[before.min(keys.records.len())..].to_vec(),
        ..Default::default()
    };
    if fresh.records.is_empty() {
        return;
    }
    match try_keys(meta, &fresh) {
        Ok(o) => *opened = Ok(o),
        Err(e) => {
            if matches!(
                opened,
                Err(crate::bitlocker::UnlockError::NoKeyForVolume { .. })
            ) {
                *opened = Err(e);
            }
        }
    }
}

/// The key that opened a volume, and where it came from (for the report).
fn try_keys(
    meta: &crate::bitlocker::Metadata,
    store: &crate::bitlocker::keyfile::KeyStore,
) -> std::result::Result<(crate::bitlocker::Unlocked, &'static str), crate::bitlocker::UnlockError>
{
    use crate::bitlocker::keyfile::KeyMaterial;
    use crate::bitlocker::{unlock, Credential, ProtectorKind, UnlockError};
    // A suspended volume (clear key) needs no key at all.
    if meta.vmks().any(|v| v.kind == ProtectorKind::ClearKey) {
        if let Ok(u) = unlock(meta, &Credential::ClearKey) {
            return Ok((u, "clear-key"));
        }
    }
    let mut last = None;
    let mut candidates: Vec<_> = meta
        .vmks()
        .flat_map(|v| store.candidates(&v.guid))
        .collect();
    // Keys given without an ID (typed on the command line, a bare list)
    // are tried too: each costs one key stretch per protector.
    candidates.extend(store.without_id());
    candidates.sort_by_key(|r| r.cost());
    for r in candidates {
        let source = match r.material {
            KeyMaterial::StartupKey(_) => "startup-key",
            KeyMaterial::Password(_) => "password",
            KeyMaterial::RecoveryPassword(_) if r.source.starts_with("sealed:") => {
                "sealed-key-file"
            }
            KeyMaterial::RecoveryPassword(_) if r.source.starts_with("network:") => "network",
            KeyMaterial::RecoveryPassword(_) if r.source.starts_with("typed") => "typed",
            KeyMaterial::RecoveryPassword(_) => "key-file",
        };
        match unlock(meta, &r.credential()) {
            Ok(u) => return Ok((u, source)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(UnlockError::NoKeyForVolume {
        protectors: meta.vmks().map(|v| (v.guid, v.kind)).collect(),
    }))
}

impl VolumeOps for KernelVolumes {
    fn bitlocker(&mut self, dev: &str) -> Result<BitlockerState> {
        let mut f = self.open(dev)?;
        let b = crate::volstate::read_bitlocker(&mut f, 0)?;
        Ok(BitlockerState {
            encryption_method: b.encryption_method,
            key_protectors: b
                .key_protectors
                .iter()
                .map(|k| format!("{} ({})", k.guid, k.kind))
                .collect(),
            ..Default::default()
        })
    }

    fn ntfs_serial(&mut self, dev: &str) -> Result<u64> {
        let mut f = self.open(dev)?;
        Ok(crate::volstate::read_ntfs_state(&mut f, 0)?.serial)
    }

    fn unlock(&mut self, dev: &str) -> Result<(String, BitlockerState)> {
        use crate::bitlocker::{assess, dm, read_metadata, Readiness};
        let mut f = self.open(dev)?;
        let meta = read_metadata(&mut f, 0).context("reading the BitLocker metadata")?;
        let len = self.size(dev)?;
        let mut state = self.bitlocker(dev).unwrap_or_default();
        match assess(&meta, len) {
            Readiness::Ready { .. } => {}
            // Typed, so the report can say no key will help.
            Readiness::Refused(r) => return Err(anyhow::Error::new(r)),
            other => anyhow::bail!("{other}"),
        }
        // Time spent deriving keys and mapping, not waiting for a person
        // or a server: the unlock figure `scripts/bench` reads.
        let t = std::time::Instant::now();
        let mut waited = std::time::Duration::ZERO;
        let mut opened = try_keys(&meta, &self.keys);
        let mut network = Vec::new();
        if opened.is_err() {
            if let Some(fetch) = self.fetch.as_mut() {
                let w = std::time::Instant::now();
                let before = self.keys.records.len();
                let f = fetch(dev, &meta, &mut self.keys);
                waited += w.elapsed();
                self.lines.extend(f.lines);
                self.lines.extend(f.problems.iter().cloned());
                self.notes.extend(f.problems.iter().cloned());
                network = f.problems;
                try_fresh(&meta, &self.keys, before, &mut opened);
            }
        }
        // Sealed key files are opened only now that a volume needs a key
        // no plain file and no server gave (a person must type for them).
        let mut nobody_there = false;
        if opened.is_err() {
            let w = std::time::Instant::now();
            let before = self.keys.records.len();
            let outcome = self.open_sealed(dev);
            waited += w.elapsed();
            match outcome {
                SealedOutcome::Opened => try_fresh(&meta, &self.keys, before, &mut opened),
                SealedOutcome::NobodyThere => nobody_there = true,
                SealedOutcome::NotOpened => {}
            }
        }
        let opened = match opened {
            Ok(o) => o,
            Err(first) => {
                // Ask a person, when one can be asked; each answer is tried.
                let mut got = None;
                if let Some(ask) = self.prompt.as_mut().filter(|_| !nobody_there) {
                    loop {
                        let w = std::time::Instant::now();
                        let answer = ask(dev, &meta);
                        waited += w.elapsed();
                        let Some(typed) = answer else { break };
                        let (c, source) = typed.credential();
                        if let Ok(u) = crate::bitlocker::unlock(&meta, &c) {
                            got = Some((u, source));
                            break;
                        }
                    }
                }
                match got {
                    Some(g) => g,
                    None if network.is_empty() => {
                        anyhow::bail!("{first}; {}", assess(&meta, len))
                    }
                    None => {
                        anyhow::bail!("{first}; {}; {}", network.join("; "), assess(&meta, len))
                    }
                }
            }
        };
        let derived = t.elapsed().saturating_sub(waited);
        let t_map = std::time::Instant::now();
        let (unlocked, source) = opened;
        let plan = dm::plan(&meta, len)?;
        let table = dm::render_table(&plan, &unlocked.key, &self.dev(dev).to_string_lossy())?;
        let name = format!("defib-{}", dev.rsplit('/').next().unwrap_or(dev));
        let node = crate::devmapper::create(&self.root, &name, &table, false)
            .with_context(|| format!("mapping {dev} with dm-crypt ({})", plan.describe()))?;
        self.mapped.push(name);
        let mapped = node
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // devtmpfs makes the node as the device appears; give it a moment.
        for _ in 0..50 {
            if node.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let mapping = t_map.elapsed();
        self.lines.push(format!(
            "bitlocker: {dev} unlocked in {:.2} s (derive {:.2} s, map {:.2} s; key from {source})",
            (derived + mapping).as_secs_f64(),
            derived.as_secs_f64(),
            mapping.as_secs_f64()
        ));
        if self.hash_unlocked {
            let mut f = std::fs::File::open(&node)
                .with_context(|| format!("opening {}", node.display()))?;
            state.plain_sha256 = Some(
                crate::hash::sha256_reader(&mut f)
                    .with_context(|| format!("reading {}", node.display()))?,
            );
        }
        state.unlocked = true;
        state.unlocked_with = Some(unlocked.protector.to_string());
        state.key_source = Some(source.into());
        Ok((mapped, state))
    }

    fn lock(&mut self, mapped: &str) -> Result<()> {
        // `mapped` is the node (dm-N); the dm name is what remove wants.
        let Some(i) = self.mapped.iter().position(|n| {
            std::fs::read_to_string(self.root.join("sys/block").join(mapped).join("dm/name"))
                .map(|s| s.trim() == n)
                .unwrap_or(false)
        }) else {
            return Ok(());
        };
        let name = self.mapped.remove(i);
        crate::devmapper::remove(&self.root, &name)
    }

    fn ntfs_dirty(&mut self, dev: &str) -> Result<bool> {
        let mut f = self.open(dev)?;
        Ok(crate::volstate::read_ntfs_state(&mut f, 0)?.dirty)
    }

    fn mount(&mut self, dev: &str, rw: bool, force: bool) -> Result<PathBuf> {
        use rustix::mount::{mount, MountFlags};
        let name = dev.rsplit('/').next().unwrap_or(dev);
        let target = self.root.join("run/defib/vol").join(name);
        std::fs::create_dir_all(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        let flags = if rw {
            MountFlags::NOATIME
        } else {
            MountFlags::RDONLY
        };
        // ntfs3 mount options (Documentation/filesystems/ntfs3.rst): `force`
        // allows read-write on a dirty volume; nothing else is needed.
        let data: Option<&std::ffi::CStr> = if force { Some(c"force") } else { None };
        mount(self.dev(dev), &target, "ntfs3", flags, data).with_context(|| {
            format!(
                "mounting /dev/{name} with ntfs3 ({})",
                if rw { "read-write" } else { "read-only" }
            )
        })?;
        self.mounted.insert(dev.to_string(), target.clone());
        Ok(target)
    }

    /// The system partition of `dev`'s disk (`syspart::find`), mounted
    /// under `/run/defib/sys/<name>`: vfat for an ESP, ntfs3 for a BIOS
    /// "System Reserved" partition. Remounted when wanted the other way.
    fn system_partition(&mut self, dev: &str, rw: bool) -> Result<Option<PathBuf>> {
        use rustix::mount::{mount, MountFlags};
        let Some(sp) = crate::syspart::find(&self.root, dev)? else {
            return Ok(None);
        };
        let fstype = match sp.fs {
            crate::probe::FsKind::Fat => "vfat",
            crate::probe::FsKind::Ntfs => "ntfs3",
            other => anyhow::bail!(
                "the system partition /dev/{} holds {} (not FAT or NTFS)",
                sp.name,
                other.as_str()
            ),
        };
        let key = format!("system:{}", sp.name);
        self.umount(&key)?;
        let target = self.root.join("run/defib/sys").join(&sp.name);
        std::fs::create_dir_all(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        let flags = if rw {
            MountFlags::NOATIME
        } else {
            MountFlags::RDONLY
        };
        mount(
            self.dev(&sp.name),
            &target,
            fstype,
            flags,
            None::<&std::ffi::CStr>,
        )
        .with_context(|| {
            format!(
                "mounting the system partition /dev/{} with {fstype} ({})",
                sp.name,
                if rw { "read-write" } else { "read-only" }
            )
        })?;
        self.mounted.insert(key, target.clone());
        Ok(Some(target))
    }

    fn umount(&mut self, dev: &str) -> Result<()> {
        let Some(t) = self.mounted.remove(dev) else {
            return Ok(());
        };
        rustix::fs::sync();
        rustix::mount::unmount(&t, rustix::mount::UnmountFlags::empty())
            .with_context(|| format!("unmounting {}", t.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitlocker::keyfile::SealedFile;
    use crate::bitlocker::sealed::{seal, MIN_WORK_FACTOR};
    use std::cell::RefCell;
    use std::rc::Rc;

    const CSV: &str = "KeyID,RecoveryKey\r\n{3FD763F9-74C7-4E90-8FA2-1F6A2E2B4E0C},042647-302313-590458-071500-554323-116567-412181-516978\r\n";

    /// Volumes with one sealed file and a scripted person at the console;
    /// the log records each notice the prompt was given.
    fn with_answers(answers: Vec<Passphrase>) -> (KernelVolumes, Rc<RefCell<Vec<Option<String>>>>) {
        let mut v = KernelVolumes::new(Path::new("/nonexistent"));
        v.keys.sealed.push(SealedFile {
            name: "keys.csv.age".into(),
            bytes: seal(CSV.as_bytes(), "right", MIN_WORK_FACTOR).unwrap(),
        });
        let log = Rc::new(RefCell::new(Vec::new()));
        let l = log.clone();
        let mut answers = answers.into_iter();
        v.passphrase = Some(Box::new(move |dev, files, notice| {
            assert_eq!(dev, "nvme0n1p3");
            assert_eq!(files, ["keys.csv.age"]);
            l.borrow_mut().push(notice.map(str::to_string));
            answers.next().unwrap_or(Passphrase::TimedOut)
        }));
        (v, log)
    }

    fn typed(s: &str) -> Passphrase {
        Passphrase::Typed(zeroize::Zeroizing::new(s.to_string()))
    }

    #[test]
    fn a_wrong_passphrase_asks_again_and_the_right_one_adds_the_keys() {
        let (mut v, log) = with_answers(vec![typed("wrong"), typed("right")]);
        let told = Rc::new(RefCell::new(Vec::<String>::new()));
        let t = told.clone();
        v.tell = Some(Box::new(move |l| t.borrow_mut().push(l.to_string())));
        assert_eq!(v.open_sealed("nvme0n1p3"), SealedOutcome::Opened);
        assert_eq!(
            *told.borrow(),
            v.notes,
            "told on the console as it happened"
        );
        let log = log.borrow();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0], None);
        assert!(
            log[1]
                .as_deref()
                .unwrap()
                .contains("opens none of the sealed key files (try 1 of 3)"),
            "{log:?}"
        );
        assert_eq!(v.keys.records.len(), 1);
        assert!(v.keys.records[0].source.starts_with("sealed:keys.csv.age"));
        assert_eq!(v.notes, ["sealed key file keys.csv.age: opened, 1 key(s)"]);
        for n in &v.notes {
            assert!(!n.contains("right") && !n.contains("042647"), "{n}");
        }
    }

    #[test]
    fn the_passphrase_is_asked_once_per_run() {
        let (mut v, log) = with_answers(vec![Passphrase::Skipped, typed("right")]);
        assert_eq!(v.open_sealed("nvme0n1p3"), SealedOutcome::NotOpened);
        // The next locked volume does not ask again.
        assert_eq!(v.open_sealed("nvme0n1p3"), SealedOutcome::NotOpened);
        assert_eq!(log.borrow().len(), 1);
        assert!(v.keys.records.is_empty());
    }

    #[test]
    fn three_wrong_passphrases_or_nobody_there_go_on_without() {
        let (mut v, log) = with_answers(vec![typed("a"), typed("b"), typed("c"), typed("right")]);
        assert_eq!(v.open_sealed("nvme0n1p3"), SealedOutcome::NotOpened);
        assert_eq!(log.borrow().len(), 3, "bounded tries");
        assert_eq!(v.keys.sealed.len(), 1, "still sealed");
        assert!(
            v.notes[0].contains("3 passphrases typed, none opened them"),
            "{:?}",
            v.notes
        );

        let (mut v, _) = with_answers(vec![Passphrase::TimedOut]);
        assert_eq!(v.open_sealed("nvme0n1p3"), SealedOutcome::NobodyThere);
    }
}
