//! The boot medium: the defib stick's FAT32 partition (GPT name `DEFIB`,
//! FAT label `DEFIB`) that carries `defib/manifest.json` and collects
//! `reports/`.
//!
//! This module finds it among the block devices, waits a bounded time for
//! slow USB enumeration, picks the right stick when several are attached,
//! and mounts it. It does not read the image's boot files, and it is never
//! used to find victim disks (that is `probe`).

use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::buildinfo::read_manifest;
use crate::probe::{fat_label, first_sector, list_block, BlockDev};
use crate::report::MediumKind;

/// GPT partition name and FAT volume label of the medium (the builder's
/// side of the contract).
pub const LABEL: &str = "DEFIB";

/// Where the medium is mounted while the rescue runs.
pub const MOUNT_POINT: &str = "run/defib/medium";

/// Kind of medium from the device name and the target of its
/// `/sys/class/block/<name>` link.
pub fn medium_kind(name: &str, sysfs_path: &str) -> MediumKind {
    if sysfs_path.contains("/usb") {
        MediumKind::Usb
    } else if name.starts_with("sr") {
        MediumKind::Cdrom
    } else {
        MediumKind::Disk
    }
}

/// Partitions that claim to be the medium: GPT name `DEFIB`, or (if the
/// stick was rewritten by a tool that lost GPT names) a FAT label `DEFIB`.
pub fn candidates(root: &Path) -> Vec<BlockDev> {
    let Ok(devs) = list_block(root) else {
        return Vec::new();
    };
    devs.into_iter()
        .filter(|d| d.partition)
        .filter(|d| {
            d.partname.as_deref() == Some(LABEL)
                || first_sector(root, &d.name)
                    .ok()
                    .and_then(|s| fat_label(&s))
                    .is_some_and(|l| l.eq_ignore_ascii_case(LABEL))
        })
        .collect()
}

/// Mounting, behind a trait so selection is testable without a kernel.
pub trait Mounter {
    /// Mounts `/dev/<dev>` and returns where.
    fn mount(&mut self, dev: &str) -> Result<PathBuf>;
    /// Unmounts what `mount` mounted last.
    fn unmount(&mut self) -> Result<()>;
}

/// The medium in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub dev: BlockDev,
    /// Where it is mounted.
    pub path: PathBuf,
    /// The manifest's build id.
    pub build_id: String,
    /// The manifest's build id equals the initramfs's.
    pub matches_build: bool,
}

/// Mounts each candidate in turn and keeps the first whose manifest's
/// `build_id` equals `expected`; failing that, the first with any readable
/// manifest. The chosen one is left mounted. `log` gets one line per
/// candidate rejected.
pub fn select(
    cands: &[BlockDev],
    expected: Option<&str>,
    m: &mut dyn Mounter,
    log: &mut dyn FnMut(&str),
) -> Option<Found> {
    let mut fallback: Option<(usize, String)> = None;
    for (i, d) in cands.iter().enumerate() {
        let path = match m.mount(&d.name) {
            Ok(p) => p,
            Err(e) => {
                log(&format!("medium candidate {}: {e:#}", d.name));
                continue;
            }
        };
        match read_manifest(&path) {
            Ok(man) if expected.is_none() || expected == Some(man.build_id.as_str()) => {
                return Some(Found {
                    dev: d.clone(),
                    path,
                    matches_build: expected.is_some(),
                    build_id: man.build_id,
                });
            }
            Ok(man) => {
                log(&format!(
                    "medium candidate {}: build {} is not this image's",
                    d.name, man.build_id
                ));
                fallback.get_or_insert((i, man.build_id));
            }
            Err(e) => log(&format!("medium candidate {}: {e:#}", d.name)),
        }
        if let Err(e) = m.unmount() {
            log(&format!("medium candidate {}: {e:#}", d.name));
        }
    }
    let (i, build_id) = fallback?;
    let d = &cands[i];
    match m.mount(&d.name) {
        Ok(path) => Some(Found {
            dev: d.clone(),
            path,
            build_id,
            matches_build: false,
        }),
        Err(e) => {
            log(&format!("medium {}: {e:#}", d.name));
            None
        }
    }
}

/// How a wait for devices ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleEnd {
    /// The device set stopped changing (and the medium, if wanted, is there).
    Settled,
    /// The bound ran out.
    TimedOut,
}

/// Decides when block devices have settled: the set of names unchanged for
/// `quiet`, and the medium present if one is wanted; or `limit` reached.
/// Time is passed in, so the logic is tested without sleeping.
#[derive(Debug)]
pub struct Settle {
    limit: Duration,
    quiet: Duration,
    last: Option<BTreeSet<String>>,
    since: Duration,
}

impl Settle {
    pub fn new(limit: Duration, quiet: Duration) -> Settle {
        Settle {
            limit,
            quiet,
            last: None,
            since: Duration::ZERO,
        }
    }

    /// Feeds one poll taken `now` after the start. Returns `Some` when
    /// waiting should stop.
    pub fn observe(
        &mut self,
        now: Duration,
        names: BTreeSet<String>,
        medium_found: bool,
        want_medium: bool,
    ) -> Option<SettleEnd> {
        if self.last.as_ref() != Some(&names) {
            self.last = Some(names);
            self.since = now;
        }
        let stable = now.saturating_sub(self.since) >= self.quiet;
        if stable && (medium_found || !want_medium) {
            Some(SettleEnd::Settled)
        } else if now >= self.limit {
            Some(SettleEnd::TimedOut)
        } else {
            None
        }
    }
}

/// The names in `<root>/sys/class/block`, for [`Settle`].
pub fn block_names(root: &Path) -> BTreeSet<String> {
    std::fs::read_dir(root.join("sys/class/block"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Mounts the medium with the kernel: vfat, read-write (reports are
/// written), never executable.
pub struct KernelMounter {
    pub root: PathBuf,
    mounted: Option<PathBuf>,
}

impl KernelMounter {
    pub fn new(root: &Path) -> KernelMounter {
        KernelMounter {
            root: root.to_path_buf(),
            mounted: None,
        }
    }
}

impl Mounter for KernelMounter {
    fn mount(&mut self, dev: &str) -> Result<PathBuf> {
        use rustix::mount::{mount, MountFlags};
        let target = self.root.join(MOUNT_POINT);
        std::fs::create_dir_all(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        let source = self.root.join("dev").join(dev);
        mount(
            &source,
            &target,
            "vfat",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            None,
        )
        .with_context(|| format!("mounting {} on {}", source.display(), target.display()))?;
        self.mounted = Some(target.clone());
        Ok(target)
    }

    fn unmount(&mut self) -> Result<()> {
        let Some(target) = self.mounted.take() else {
            return Ok(());
        };
        rustix::fs::sync();
        rustix::mount::unmount(&target, rustix::mount::UnmountFlags::empty())
            .with_context(|| format!("unmounting {}", target.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::tests::{sector_with, FakeDisk, NVME, USB};
    use std::collections::HashMap;

    const USB2: &str = "pci0000:00/0000:00:14.0/usb2/2-2/2-2:1.0/host7/target7:0:0/7:0:0:0";

    #[test]
    fn kind_from_sysfs_path() {
        assert_eq!(
            medium_kind("sdb1", "../../devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb/sdb1"),
            MediumKind::Usb
        );
        assert_eq!(
            medium_kind(
                "sr0",
                "../../devices/pci0000:00/0000:00:1f.2/ata2/host1/target1:0:0/1:0:0:0/block/sr0"
            ),
            MediumKind::Cdrom
        );
        assert_eq!(
            medium_kind(
                "vda1",
                "../../devices/pci0000:00/0000:00:04.0/virtio2/block/vda/vda1"
            ),
            MediumKind::Disk
        );
    }

    fn fat32(label: &[u8; 11]) -> Vec<u8> {
        let mut s = sector_with(0x52, b"FAT32   ", true);
        s[0x47..0x52].copy_from_slice(label);
        s
    }

    /// A fake tree with the victim disk, two defib sticks and a stick whose
    /// GPT name was lost but whose FAT label says DEFIB.
    fn tree(root: &Path) {
        let t = FakeDisk { root };
        t.disk(NVME, "nvme0n1", false, &[0u8; 512]);
        t.part(
            NVME,
            "nvme0n1",
            "nvme0n1p1",
            "EFI system partition",
            &fat32(b"SYSTEM     "),
        );
        t.disk(USB, "sdb", true, &[0u8; 512]);
        t.part(USB, "sdb", "sdb1", "DEFIB", &fat32(b"DEFIB      "));
        t.disk(USB2, "sdc", true, &[0u8; 512]);
        t.part(USB2, "sdc", "sdc1", "", &fat32(b"DEFIB      "));
    }

    #[test]
    fn finds_candidates_by_partname_or_label() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        let names: Vec<_> = candidates(dir.path()).into_iter().map(|d| d.name).collect();
        assert_eq!(names, ["sdb1", "sdc1"]);
    }

    /// "Mounts" a device by handing back a directory prepared per device.
    struct FakeMounter {
        dirs: HashMap<String, PathBuf>,
        mounted: Option<String>,
        mounts: Vec<String>,
    }

    impl Mounter for FakeMounter {
        fn mount(&mut self, dev: &str) -> Result<PathBuf> {
            assert!(self.mounted.is_none(), "mounted twice");
            let p = self.dirs.get(dev).cloned().context("no such device")?;
            self.mounted = Some(dev.to_string());
            self.mounts.push(dev.to_string());
            Ok(p)
        }
        fn unmount(&mut self) -> Result<()> {
            self.mounted = None;
            Ok(())
        }
    }

    fn sticks(root: &Path, ids: &[(&str, Option<&str>)]) -> FakeMounter {
        let mut dirs = HashMap::new();
        for (dev, id) in ids {
            let d = root.join("media").join(dev);
            std::fs::create_dir_all(d.join("defib")).unwrap();
            if let Some(id) = id {
                std::fs::write(
                    d.join("defib/manifest.json"),
                    format!(r#"{{"build_id":"{id}"}}"#),
                )
                .unwrap();
            }
            dirs.insert(dev.to_string(), d);
        }
        FakeMounter {
            dirs,
            mounted: None,
            mounts: Vec::new(),
        }
    }

    #[test]
    fn prefers_the_stick_of_this_build() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        let cands = candidates(dir.path());
        let mut m = sticks(dir.path(), &[("sdb1", Some("old")), ("sdc1", Some("new"))]);
        let mut log = Vec::new();
        let f = select(&cands, Some("new"), &mut m, &mut |l| {
            log.push(l.to_string())
        })
        .unwrap();
        assert_eq!(f.dev.name, "sdc1");
        assert!(f.matches_build);
        assert_eq!(m.mounted.as_deref(), Some("sdc1"));
        assert_eq!(log.len(), 1);
    }

    #[test]
    fn falls_back_to_any_defib_stick() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        let cands = candidates(dir.path());
        let mut m = sticks(dir.path(), &[("sdb1", None), ("sdc1", Some("other"))]);
        let f = select(&cands, Some("mine"), &mut m, &mut |_| {}).unwrap();
        assert_eq!(
            (f.dev.name.as_str(), f.build_id.as_str(), f.matches_build),
            ("sdc1", "other", false)
        );
        assert_eq!(m.mounts, ["sdb1", "sdc1", "sdc1"]);
        assert_eq!(m.mounted.as_deref(), Some("sdc1"));
    }

    #[test]
    fn none_when_no_manifest_anywhere() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        let cands = candidates(dir.path());
        let mut m = sticks(dir.path(), &[("sdb1", None)]);
        assert_eq!(select(&cands, None, &mut m, &mut |_| {}), None);
        assert_eq!(m.mounted, None);
    }

    #[test]
    fn without_expected_build_first_manifest_wins() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        let cands = candidates(dir.path());
        let mut m = sticks(dir.path(), &[("sdb1", Some("a")), ("sdc1", Some("b"))]);
        let f = select(&cands, None, &mut m, &mut |_| {}).unwrap();
        assert_eq!(f.dev.name, "sdb1");
        assert!(!f.matches_build);
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn settles_after_quiet_period_with_medium() {
        let ms = Duration::from_millis;
        let mut s = Settle::new(Duration::from_secs(15), ms(1500));
        assert_eq!(s.observe(ms(0), set(&["sda"]), false, true), None);
        assert_eq!(s.observe(ms(1000), set(&["sda", "sdb"]), true, true), None);
        assert_eq!(s.observe(ms(2000), set(&["sda", "sdb"]), true, true), None);
        assert_eq!(
            s.observe(ms(2500), set(&["sda", "sdb"]), true, true),
            Some(SettleEnd::Settled)
        );
    }

    #[test]
    fn waits_for_medium_until_the_limit() {
        let ms = Duration::from_millis;
        let mut s = Settle::new(ms(3000), ms(1500));
        assert_eq!(s.observe(ms(0), set(&["sda"]), false, true), None);
        assert_eq!(s.observe(ms(2000), set(&["sda"]), false, true), None);
        assert_eq!(
            s.observe(ms(3000), set(&["sda"]), false, true),
            Some(SettleEnd::TimedOut)
        );
    }

    #[test]
    fn pxe_needs_only_quiet() {
        let ms = Duration::from_millis;
        let mut s = Settle::new(ms(15000), ms(1500));
        assert_eq!(s.observe(ms(0), set(&["sda"]), false, false), None);
        assert_eq!(
            s.observe(ms(1500), set(&["sda"]), false, false),
            Some(SettleEnd::Settled)
        );
    }

    #[test]
    fn zero_wait_stops_at_once() {
        let mut s = Settle::new(Duration::ZERO, Duration::from_millis(1500));
        assert_eq!(
            s.observe(Duration::ZERO, set(&[]), false, true),
            Some(SettleEnd::TimedOut)
        );
    }
}
