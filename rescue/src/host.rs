//! Host mode: the rescue run by hand on any Linux machine against a
//! Windows volume that is already mounted (`--root`) or a disk it may mount
//! itself (`--device`), e.g. a cloud VM's disk attached to a rescue VM.
//!
//! Same engine, same journal and vault, same report as the image; the
//! report goes to stdout (text or `--json`) and, when something was
//! changed, into the volume's `\defib\<run-id>\`.

use crate::bootargs::Mode as BootMode;
use crate::engine::{self, Mode};
use crate::repair::{check_volume, Payloads};
use crate::report::{self, Report};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A volume the admin already mounted (`--root`): its dirty flag and
/// BitLocker state cannot be read from a folder, and mounting it read-only
/// or read-write means using it as it is.
struct MountedRoot(PathBuf, Option<PathBuf>);

impl crate::repair::VolumeOps for MountedRoot {
    fn bitlocker(&mut self, _dev: &str) -> Result<crate::report::BitlockerState> {
        bail!("a mounted folder has no BitLocker metadata to read")
    }
    fn ntfs_dirty(&mut self, _dev: &str) -> Result<bool> {
        bail!("the dirty flag of a mounted folder cannot be read")
    }
    fn mount(&mut self, _dev: &str, _rw: bool, _force: bool) -> Result<PathBuf> {
        Ok(self.0.clone())
    }
    fn umount(&mut self, _dev: &str) -> Result<()> {
        Ok(())
    }
    /// `--esp DIR`, as the admin mounted it.
    fn system_partition(&mut self, _dev: &str, _rw: bool) -> Result<Option<PathBuf>> {
        match &self.1 {
            Some(p) if !p.is_dir() => bail!("--esp {}: not a folder", p.display()),
            other => Ok(other.clone()),
        }
    }
}

/// Where the volume is.
pub enum Target {
    /// A mounted volume, and the mounted system partition (`--esp`).
    Root(PathBuf, Option<PathBuf>),
    Device(String),
}

/// The payloads folder: `/payloads` inside the image, else `./payloads`.
pub fn default_payloads() -> PathBuf {
    let image = Path::new("/payloads");
    if image.join("playbooks").is_dir() {
        image.to_path_buf()
    } else {
        PathBuf::from("payloads")
    }
}

fn partitions_of(dev: &str) -> Result<Vec<(String, bool)>> {
    use crate::probe::{classify, first_sector, list_block, FsKind};
    let root = Path::new("/");
    let name = dev.trim_start_matches("/dev/").to_string();
    let all = list_block(root).context("listing block devices")?;
    let mut names: Vec<String> = all
        .iter()
        .filter(|b| b.parent.as_deref() == Some(name.as_str()))
        .map(|b| b.name.clone())
        .collect();
    if names.is_empty() {
        names.push(name);
    }
    let mut out = Vec::new();
    for n in names {
        let sector = first_sector(root, &n).with_context(|| format!("reading /dev/{n}"))?;
        match classify(&sector) {
            FsKind::Ntfs => out.push((n, false)),
            FsKind::Bitlocker => out.push((n, true)),
            _ => {}
        }
    }
    Ok(out)
}

/// Runs scan or fix; returns the report (already written to the victim
/// when the run changed it).
pub fn run(
    target: &Target,
    payloads: &Path,
    mode: Mode,
    only: Option<&str>,
    keys: crate::bitlocker::keyfile::KeyStore,
) -> Result<Report> {
    if let Target::Root(_, Some(esp)) = target {
        if !esp.is_dir() {
            bail!(
                "--esp {}: not a folder; mount the EFI system partition and give its mount point",
                esp.display()
            );
        }
    }
    let payloads = Payloads::load(payloads)?;
    if payloads.playbooks.is_empty() {
        bail!(
            "no playbooks in {}/playbooks; pass --payloads DIR",
            payloads
                .store
                .root()
                .parent()
                .unwrap_or(Path::new("."))
                .display()
        );
    }
    let started = SystemTime::now();
    let run_id = crate::runid::run_id(started, crate::runid::random4());
    let mut rep = Report::begin(started, run_id.clone(), BootMode::of_engine(mode));
    rep.boot.firmware = crate::firmware::firmware(Path::new("/"));
    rep.boot.kernel = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    rep.boot.cmdline = std::env::args().collect::<Vec<_>>().join(" ");
    let mut vols = crate::volumes::KernelVolumes::new(Path::new("/"));
    vols.keys = keys;
    let windows = match target {
        Target::Root(root, esp) => {
            // The same safe path as the image: scan read-only, decide
            // whether the volume may be written (one function for both),
            // then fix. The admin mounted it; "mounting" is using it.
            let mut ops = MountedRoot(root.clone(), esp.clone());
            let name = root.display().to_string();
            check_volume(&mut ops, &name, false, &payloads, mode, &run_id, only)
        }
        Target::Device(dev) => {
            let mut v = Vec::new();
            for (part, bitlocker) in partitions_of(dev)? {
                v.extend(check_volume(
                    &mut vols, &part, bitlocker, &payloads, mode, &run_id, only,
                ));
            }
            v
        }
    };
    rep.verdict = crate::verdict::decide(&Default::default(), &windows).verdict;
    rep.windows = windows.clone();
    rep.finish(SystemTime::now());
    for w in &windows {
        if let (Some(m), Some(_)) = (&w.mount, &w.run_dir) {
            report::write_victim_reports(m, &run_id, &rep)?;
        }
    }
    for e in vols.umount_all() {
        eprintln!("rescue: {e}");
    }
    Ok(rep)
}

/// `rescue undo`: the latest run (or `run`) on the volume at `root`.
pub fn undo(root: &Path, esp: Option<&Path>, run: Option<&str>) -> Result<engine::UndoResult> {
    let id = match run {
        Some(r) => r.to_string(),
        None => engine::latest_undoable(root)?
            .with_context(|| format!("no run to undo under {}\\defib", root.display()))?,
    };
    engine::undo(root, esp, &id)
}
