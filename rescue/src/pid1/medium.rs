//! The boot medium: the defib stick's FAT32 partition (GPT name `DEFIB`,
//! FAT label `DEFIB`) that carries `defib/manifest.json` and collects
//! `reports/`; or the defib ISO (ISO 9660 volume id `DEFIB`) on a CD
//! drive (`sr*`) or written to a stick, which is read-only.
//!
//! This module finds it among the block devices, decides when the wait for
//! it and the disks is over (the uevents are `hotplug`'s), picks the right stick when several are attached,
//! and mounts it. It does not read the image's boot files, and it is never
//! used to find victim disks (that is `probe`).

use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::buildinfo::read_manifest;
use crate::probe::{fat_label, first_sector, list_block, BlockDev};
use crate::report::MediumKind;

use crate::layout::LABEL;

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
/// stick was rewritten by a tool that lost GPT names) a FAT label `DEFIB`;
/// and disks or partitions holding the defib ISO (a CD in an `sr` drive,
/// or the hybrid ISO written to a stick, where the whole disk and its
/// first partition both start with the ISO).
pub fn candidates(root: &Path) -> Vec<BlockDev> {
    let Ok(devs) = list_block(root) else {
        return Vec::new();
    };
    devs.into_iter()
        .filter(|d| {
            (d.partition
                && (d.partname.as_deref() == Some(LABEL)
                    || first_sector(root, &d.name)
                        .ok()
                        .and_then(|s| fat_label(&s))
                        .is_some_and(|l| l.eq_ignore_ascii_case(LABEL))))
                || is_defib_iso(root, &d.name)
        })
        .collect()
}

/// ECMA-119 §8.4 (ISO 9660): the Primary Volume Descriptor is logical
/// sector 16 of 2048 bytes; byte 0 is the type (1), bytes 1..6 the
/// standard identifier "CD001", bytes 40..72 the volume identifier
/// (padded with spaces).
const ISO_PVD_OFFSET: u64 = 16 * 2048;
const ISO_PVD_TYPE: u8 = 1;
const ISO_STANDARD_ID: &[u8] = b"CD001";
const ISO_VOLUME_ID: std::ops::Range<usize> = 40..72;

/// The volume identifier of an ISO 9660 Primary Volume Descriptor, or
/// `None` if `pvd` is not one.
pub fn iso_volume_id(pvd: &[u8]) -> Option<String> {
    if pvd.first() != Some(&ISO_PVD_TYPE) || pvd.get(1..6) != Some(ISO_STANDARD_ID) {
        return None;
    }
    let id = pvd.get(ISO_VOLUME_ID)?;
    Some(String::from_utf8_lossy(id).trim_end().to_string())
}

/// `<root>/dev/<name>` holds an ISO 9660 volume with id `DEFIB`.
pub fn is_defib_iso(root: &Path, name: &str) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut pvd = [0u8; 80];
    std::fs::File::open(crate::probe::dev_path(root, name))
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(ISO_PVD_OFFSET))?;
            f.read_exact(&mut pvd)
        })
        .ok()
        .and_then(|_| iso_volume_id(&pvd))
        .is_some_and(|id| id.eq_ignore_ascii_case(LABEL))
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

/// What the wait for devices looks at, taken from sysfs after each batch
/// of uevents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Present {
    /// A medium candidate (GPT name or FAT label `DEFIB`, or the ISO).
    pub medium: bool,
    /// Whole disks with media that are not the medium's: the victims.
    pub disks: Vec<String>,
    /// NVMe controllers with no namespace yet (their scan runs after the
    /// driver's probe returned, unlike ATA's and SCSI's).
    pub nvme_pending: Vec<String>,
}

/// Why the wait for devices stops now, or `None` to go on waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    /// Everything expected is there.
    Ready,
    /// The bound ran out with something missing.
    TimedOut,
}

/// Decides the end of the wait: the loaders idle (every module for the
/// devices seen so far has been loaded, so ATA and SCSI hosts have been
/// scanned, as module init waits for async probes), the medium present
/// when one is wanted, every NVMe controller with a namespace, and at least
/// one disk besides the medium; or `limit` reached. No quiet period: a
/// machine that has all of that goes on at once.
pub fn wait_end(
    now: Duration,
    limit: Duration,
    p: &Present,
    want_medium: bool,
    loaders_idle: bool,
) -> Option<WaitEnd> {
    let ready = loaders_idle
        && (p.medium || !want_medium)
        && p.nvme_pending.is_empty()
        && !p.disks.is_empty();
    if ready {
        Some(WaitEnd::Ready)
    } else if now >= limit {
        Some(WaitEnd::TimedOut)
    } else {
        None
    }
}

/// What is missing, for the line printed when the bound runs out.
pub fn missing(p: &Present, want_medium: bool, loaders_idle: bool) -> String {
    let mut m = Vec::new();
    if want_medium && !p.medium {
        m.push("the defib medium".to_string());
    }
    if p.disks.is_empty() {
        m.push("a disk besides the medium".to_string());
    }
    for c in &p.nvme_pending {
        m.push(format!("a namespace on {c}"));
    }
    if !loaders_idle {
        m.push("module loads still running".to_string());
    }
    m.join(", ")
}

/// Reads [`Present`] from `<root>/sys` and `<root>/dev`.
pub fn present_in(root: &Path) -> Present {
    let cands = candidates(root);
    let medium_disks: BTreeSet<String> = cands
        .iter()
        .map(|c| c.parent.clone().unwrap_or_else(|| c.name.clone()))
        .collect();
    let disks = list_block(root)
        .unwrap_or_default()
        .into_iter()
        .filter(|d| {
            !d.partition
                && d.sectors > 0
                && !d.name.starts_with("sr")
                && !crate::probe::skipped(&d.name)
                && !medium_disks.contains(&d.name)
        })
        .map(|d| d.name)
        .collect();
    Present {
        medium: !cands.is_empty(),
        disks,
        nvme_pending: nvme_pending(root),
    }
}

/// NVMe controllers in `<root>/sys/class/nvme` with no namespace device
/// below them (`nvme0n1`, or `nvme0c0n1` with native multipath).
pub fn nvme_pending(root: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(root.join("sys/class/nvme")) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|ctrl| {
            let has_ns = std::fs::read_dir(root.join("sys/class/nvme").join(ctrl))
                .map(|rd| {
                    rd.flatten().any(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        n.strip_prefix(ctrl.as_str())
                            .is_some_and(|rest| rest.starts_with('n') || rest.starts_with('c'))
                    })
                })
                .unwrap_or(false);
            !has_ns
        })
        .collect();
    out.sort();
    out
}

/// The names in `<root>/sys/class/block`.
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
/// written), or the ISO read-only as iso9660; never executable.
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
        let (fs, extra) = if is_defib_iso(&self.root, dev) {
            ("iso9660", MountFlags::RDONLY)
        } else {
            ("vfat", MountFlags::empty())
        };
        mount(
            &source,
            &target,
            fs,
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC | extra,
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

    fn iso_pvd(id: &str) -> Vec<u8> {
        let mut pvd = vec![0u8; 2048];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[6] = 1;
        pvd[40..72].fill(b' ');
        pvd[40..40 + id.len()].copy_from_slice(id.as_bytes());
        pvd
    }

    #[test]
    fn iso_volume_id_from_the_primary_volume_descriptor() {
        assert_eq!(iso_volume_id(&iso_pvd("DEFIB")).as_deref(), Some("DEFIB"));
        let mut bad = iso_pvd("DEFIB");
        bad[1] = b'X';
        assert_eq!(iso_volume_id(&bad), None);
        assert_eq!(iso_volume_id(&[1, b'C', b'D']), None);
    }

    #[test]
    fn finds_the_iso_on_a_cd_drive_and_on_a_stick() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        tree(root);
        let t = FakeDisk { root };
        let sata = "pci0000:00/0000:00:1f.2/ata2/host1/target1:0:0/1:0:0:0";
        t.disk(sata, "sr0", true, &[0u8; 512]);
        t.disk(sata, "sr1", true, &[0u8; 512]);
        t.disk(USB2, "sdd", true, &[0u8; 512]);
        t.part(USB2, "sdd", "sdd1", "ISOHybrid", &[0u8; 512]);
        let with_pvd = |name: &str, id: &str| {
            let mut img = vec![0u8; 16 * 2048];
            img.extend(iso_pvd(id));
            std::fs::write(root.join("dev").join(name), img).unwrap();
        };
        with_pvd("sr0", "DEFIB");
        with_pvd("sr1", "UBUNTU");
        with_pvd("sdd", "DEFIB");
        with_pvd("sdd1", "DEFIB");
        let names: Vec<_> = candidates(root).into_iter().map(|d| d.name).collect();
        assert_eq!(names, ["sdb1", "sdc1", "sdd", "sdd1", "sr0"]);
        assert!(is_defib_iso(root, "sr0"));
        assert!(!is_defib_iso(root, "sdb1"));
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

    fn present(medium: bool, disks: &[&str], nvme: &[&str]) -> Present {
        Present {
            medium,
            disks: disks.iter().map(|s| s.to_string()).collect(),
            nvme_pending: nvme.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn ready_as_soon_as_medium_and_a_disk_are_there() {
        let (s, limit) = (Duration::from_millis(300), Duration::from_secs(15));
        let p = present(true, &["sda"], &[]);
        assert_eq!(wait_end(s, limit, &p, true, true), Some(WaitEnd::Ready));
        assert_eq!(
            wait_end(s, limit, &p, true, false),
            None,
            "a load still runs"
        );
        let p = present(false, &["sda"], &[]);
        assert_eq!(wait_end(s, limit, &p, true, true), None, "no medium yet");
        assert_eq!(
            wait_end(s, limit, &p, false, true),
            Some(WaitEnd::Ready),
            "PXE"
        );
    }

    #[test]
    fn waits_for_what_is_missing_until_the_limit() {
        let limit = Duration::from_secs(15);
        let nvme = present(true, &["sda"], &["nvme0"]);
        assert_eq!(
            wait_end(Duration::from_secs(1), limit, &nvme, true, true),
            None
        );
        assert_eq!(missing(&nvme, true, true), "a namespace on nvme0");
        let no_disk = present(true, &[], &[]);
        assert_eq!(
            wait_end(Duration::from_secs(14), limit, &no_disk, true, true),
            None
        );
        assert_eq!(
            wait_end(limit, limit, &no_disk, true, true),
            Some(WaitEnd::TimedOut)
        );
        assert_eq!(
            missing(&present(false, &[], &[]), true, false),
            "the defib medium, a disk besides the medium, module loads still running"
        );
        assert_eq!(
            wait_end(Duration::ZERO, Duration::ZERO, &no_disk, true, true),
            Some(WaitEnd::TimedOut),
            "defib.wait=0 stops at once"
        );
    }

    #[test]
    fn present_reads_disks_medium_and_nvme_from_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        tree(root);
        let p = present_in(root);
        assert!(p.medium);
        assert_eq!(p.disks, ["nvme0n1"], "the sticks are not victims");
        assert!(p.nvme_pending.is_empty());
        let ctrl = root.join("sys/class/nvme");
        std::fs::create_dir_all(ctrl.join("nvme0/nvme0c0n1")).unwrap();
        std::fs::create_dir_all(ctrl.join("nvme1/power")).unwrap();
        assert_eq!(nvme_pending(root), ["nvme1"]);
    }
}
