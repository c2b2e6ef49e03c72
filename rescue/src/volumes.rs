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
    /// timings, key fetches); `notes` also go into the report.
    pub lines: Vec<String>,
    pub notes: Vec<String>,
}

/// A key source asked per locked volume (see [`KernelVolumes::fetch`]).
pub type KeyFetch = Box<dyn FnMut(&str, &crate::bitlocker::Metadata, &mut KeyStore) -> Fetched>;

/// What a key fetch gave: progress lines and failures (never a key).
#[derive(Debug, Default)]
pub struct Fetched {
    pub lines: Vec<String>,
    pub problems: Vec<String>,
}

/// What a person typed for a volume: a checked recovery password.
pub struct Typed(pub crate::bitlocker::RecoveryPassword);

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
        }
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
    candidates.sort_by_key(|r| matches!(r.material, KeyMaterial::RecoveryPassword(_)));
    for r in candidates {
        let source = match r.material {
            KeyMaterial::StartupKey(_) => "startup-key",
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
                self.notes.extend(f.problems.iter().cloned());
                network = f.problems;
                // Only the new keys: the old ones were refused already.
                let fresh = KeyStore {
                    records: self.keys.records[before..].to_vec(),
                    rejected: Vec::new(),
                };
                if !fresh.records.is_empty() {
                    match try_keys(&meta, &fresh) {
                        Ok(o) => opened = Ok(o),
                        // Say "wrong key" rather than "no key" when the
                        // server gave one that did not open the volume.
                        Err(e) => {
                            if matches!(
                                opened,
                                Err(crate::bitlocker::UnlockError::NoKeyForVolume { .. })
                            ) {
                                opened = Err(e);
                            }
                        }
                    }
                }
            }
        }
        let opened = match opened {
            Ok(o) => o,
            Err(first) => {
                // Ask a person, when one can be asked; each answer is tried.
                let mut got = None;
                if let Some(ask) = self.prompt.as_mut() {
                    loop {
                        let w = std::time::Instant::now();
                        let answer = ask(dev, &meta);
                        waited += w.elapsed();
                        let Some(Typed(rp)) = answer else { break };
                        let c = crate::bitlocker::Credential::RecoveryPassword(rp);
                        if let Ok(u) = crate::bitlocker::unlock(&meta, &c) {
                            got = Some((u, "typed"));
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
