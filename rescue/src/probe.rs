//! Block device probe: list the disks and partitions in `/sys/class/block`
//! and name the filesystem on each from its first sector.
//!
//! This is not a filesystem driver or a partition table parser: the kernel
//! already split the disks into partitions, and one boot sector is enough to
//! tell NTFS, BitLocker and FAT apart. Everything takes a root directory so
//! tests run on fake `/sys` and `/dev` trees.

use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Filesystem found in a volume's boot sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsKind {
    Ntfs,
    /// A BitLocker-encrypted volume (Vista and later format).
    Bitlocker,
    Fat,
    /// exFAT (its own OEM id; large USB sticks and SD cards).
    Exfat,
    Unknown,
}

/// The bus a disk hangs off, read from its sysfs device path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bus {
    Usb,
    Nvme,
    Ata,
    Virtio,
    Scsi,
    Unknown,
}

impl Bus {
    pub fn as_str(self) -> &'static str {
        match self {
            Bus::Usb => "usb",
            Bus::Nvme => "nvme",
            Bus::Ata => "ata",
            Bus::Virtio => "virtio",
            Bus::Scsi => "scsi",
            Bus::Unknown => "unknown",
        }
    }
}

impl FsKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FsKind::Ntfs => "ntfs",
            FsKind::Bitlocker => "bitlocker",
            FsKind::Fat => "fat",
            FsKind::Exfat => "exfat",
            FsKind::Unknown => "unknown",
        }
    }

    /// NTFS or BitLocker: a volume that may hold Windows.
    pub fn may_hold_windows(self) -> bool {
        matches!(self, FsKind::Ntfs | FsKind::Bitlocker)
    }
}

/// One disk or partition, as it appears in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Kernel name, e.g. `sda1`, `nvme0n1p3`; the node is `/dev/<device>`.
    pub device: String,
    /// Size in bytes (sysfs `size` counts 512-byte sectors on every disk).
    pub size_bytes: u64,
    /// Filesystem from the first sector.
    pub fs: FsKind,
    /// Bus the disk is attached through.
    pub bus: Bus,
    /// The disk says its medium is removable (sysfs `removable`).
    pub removable: bool,
    /// A partition rather than a whole disk.
    pub partition: bool,
    /// This is the defib boot medium, or the disk that holds it.
    pub boot_medium: bool,
}

/// Everything the probe found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// Disks and partitions in name order.
    pub volumes: Vec<Volume>,
    /// Devices that could not be read, and why.
    pub messages: Vec<String>,
}

impl Probe {
    /// Volumes that may hold Windows.
    pub fn windows_candidates(&self) -> impl Iterator<Item = &Volume> {
        self.volumes.iter().filter(|v| v.fs.may_hold_windows())
    }
}

// Boot sector offsets. NTFS and BitLocker keep an 8-byte OEM id at byte 3
// (the BIOS parameter block's BS_OEMName); BitLocker replaces "NTFS    " with
// "-FVE-FS-" ([MS-FVE] / libbde "BitLocker Drive Encryption format").
// FAT keeps BS_FilSysType at 54 (FAT12/16) or 82 (FAT32), and every FAT
// boot sector ends in 0x55 0xAA at 510 (Microsoft fatgen103, section 3).
const OEM_ID: std::ops::Range<usize> = 3..11;
const FAT16_TYPE: std::ops::Range<usize> = 0x36..0x3E;
const FAT32_TYPE: std::ops::Range<usize> = 0x52..0x5A;
const SIGNATURE: std::ops::Range<usize> = 510..512;
// Volume label: BS_VolLab, 11 bytes before BS_FilSysType (fatgen103).
const FAT16_LABEL: std::ops::Range<usize> = 0x2B..0x36;
const FAT32_LABEL: std::ops::Range<usize> = 0x47..0x52;

fn fat_signature(s: &[u8]) -> bool {
    s.get(SIGNATURE) == Some(&[0x55, 0xAA][..])
}

/// Names the filesystem from a volume's first sector (at least 512 bytes;
/// anything shorter is `Unknown`).
pub fn classify(first_sector: &[u8]) -> FsKind {
    let s = first_sector;
    if s.len() < 512 {
        return FsKind::Unknown;
    }
    match &s[OEM_ID] {
        b"NTFS    " => return FsKind::Ntfs,
        b"-FVE-FS-" => return FsKind::Bitlocker,
        b"EXFAT   " => return FsKind::Exfat,
        _ => {}
    }
    // BitLocker To Go keeps a FAT boot sector (`MSWIN4.1`) for old
    // readers; its BitLocker identifier says what it really is.
    if crate::volstate::is_bitlocker_to_go(s) {
        return FsKind::Bitlocker;
    }
    if fat_signature(s)
        && (&s[FAT32_TYPE] == b"FAT32   "
            || matches!(&s[FAT16_TYPE], b"FAT12   " | b"FAT16   " | b"FAT     ")
            || fat_bpb(s))
    {
        return FsKind::Fat;
    }
    FsKind::Unknown
}

/// A FAT BIOS parameter block whose BS_FilSysType was left blank (it is
/// informational; some formatters write nothing there): a jump at 0, bytes
/// per sector a power of two from 512 to 4096, sectors per cluster a power
/// of two, reserved sectors, one or two FATs, and a media byte (fatgen103).
fn fat_bpb(s: &[u8]) -> bool {
    let jump = s[0] == 0xEB && s[2] == 0x90 || s[0] == 0xE9;
    let bps = u16::from_le_bytes([s[11], s[12]]);
    let spc = s[13];
    let reserved = u16::from_le_bytes([s[14], s[15]]);
    let fats = s[16];
    let media = s[21];
    jump && matches!(bps, 512 | 1024 | 2048 | 4096)
        && spc.is_power_of_two()
        && reserved > 0
        && matches!(fats, 1 | 2)
        && (media == 0xF0 || media >= 0xF8)
}

/// The FAT volume label from a boot sector, trimmed; `None` if this is not
/// FAT or the label is blank.
pub fn fat_label(first_sector: &[u8]) -> Option<String> {
    if classify(first_sector) != FsKind::Fat {
        return None;
    }
    let s = first_sector;
    let raw = if &s[FAT32_TYPE] == b"FAT32   " {
        &s[FAT32_LABEL]
    } else {
        &s[FAT16_LABEL]
    };
    let label = String::from_utf8_lossy(raw).trim().to_string();
    (!label.is_empty() && label != "NO NAME").then_some(label)
}

/// The bus from a resolved sysfs device path. USB first: a USB stick also
/// shows SCSI `host`/`target` parts; ATA and virtio before plain SCSI for
/// the same reason.
pub fn bus_from_path(sysfs_path: &str) -> Bus {
    if sysfs_path.contains("/usb") {
        Bus::Usb
    } else if sysfs_path.contains("/nvme") {
        Bus::Nvme
    } else if sysfs_path.contains("/ata") {
        Bus::Ata
    } else if sysfs_path.contains("/virtio") {
        Bus::Virtio
    } else if sysfs_path.contains("/host") || sysfs_path.contains("/target") {
        Bus::Scsi
    } else {
        Bus::Unknown
    }
}

/// One entry of `/sys/class/block`, with what sysfs says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDev {
    /// Kernel name (`sdb1`).
    pub name: String,
    /// Target of the `/sys/class/block/<name>` symlink: the device path.
    pub sysfs_path: String,
    /// Has a `partition` file.
    pub partition: bool,
    /// For a partition, the disk it lives on.
    pub parent: Option<String>,
    /// `PARTNAME=` from `uevent` (the GPT partition name).
    pub partname: Option<String>,
    /// `size` in 512-byte sectors.
    pub sectors: u64,
    /// `removable` of the disk (of the parent, for a partition).
    pub removable: bool,
}

/// Devices the probe leaves out: loop and RAM disks hold nothing of the
/// victim's, and device-mapper nodes only appear once we create them.
pub fn skipped(name: &str) -> bool {
    ["loop", "ram", "zram", "dm-"]
        .iter()
        .any(|p| name.starts_with(p))
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

/// Lists `<root>/sys/class/block`, sorted by name, without skipped devices.
pub fn list_block(root: &Path) -> std::io::Result<Vec<BlockDev>> {
    let class = root.join("sys/class/block");
    let mut out = Vec::new();
    for entry in fs::read_dir(&class)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if skipped(&name) {
            continue;
        }
        let dir = class.join(&name);
        let sysfs_path = fs::read_link(&dir)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let partition = dir.join("partition").exists();
        // A partition's directory sits inside its disk's directory, so the
        // link's second-to-last component is the disk.
        let parent = partition
            .then(|| {
                Path::new(&sysfs_path)
                    .parent()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .flatten();
        let partname = read_trim(&dir.join("uevent")).and_then(|u| {
            u.lines()
                .find_map(|l| l.strip_prefix("PARTNAME=").map(str::to_string))
        });
        let sectors = read_trim(&dir.join("size"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let removable_file = if partition {
            dir.join("../removable")
        } else {
            dir.join("removable")
        };
        let removable = read_trim(&removable_file).as_deref() == Some("1");
        out.push(BlockDev {
            name,
            sysfs_path,
            partition,
            parent,
            partname,
            sectors,
            removable,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Reads the first 512 bytes of `<root>/dev/<name>`.
pub fn first_sector(root: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 512];
    let mut f = File::open(dev_path(root, name))?;
    f.read_exact(&mut buf)?;
    Ok(buf)
}

/// `<root>/dev/<name>`.
pub fn dev_path(root: &Path, name: &str) -> PathBuf {
    root.join("dev").join(name)
}

/// Probes every block device under `root`. `medium` names the boot medium
/// partition, if one was found, so it and its disk are marked.
pub fn probe(root: &Path, medium: Option<&str>) -> Probe {
    let mut probe = Probe::default();
    let devs = match list_block(root) {
        Ok(d) => d,
        Err(e) => {
            probe.messages.push(format!(
                "cannot list {}: {e}",
                root.join("sys/class/block").display()
            ));
            return probe;
        }
    };
    let medium_disk = medium.and_then(|m| {
        devs.iter()
            .find(|d| d.name == m)
            .and_then(|d| d.parent.clone())
    });
    for d in &devs {
        let fs = match first_sector(root, &d.name) {
            Ok(s) => classify(&s),
            Err(e) => {
                // An empty card reader or CD drive: worth a note, not a stop.
                if d.sectors > 0 {
                    probe
                        .messages
                        .push(format!("cannot read /dev/{}: {e}", d.name));
                }
                FsKind::Unknown
            }
        };
        probe.volumes.push(Volume {
            device: d.name.clone(),
            size_bytes: d.sectors.saturating_mul(512),
            fs,
            bus: bus_from_path(&d.sysfs_path),
            removable: d.removable,
            partition: d.partition,
            boot_medium: Some(d.name.as_str()) == medium
                || (medium_disk.as_deref() == Some(d.name.as_str())),
        });
    }
    probe
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    pub fn sector_with(at: usize, bytes: &[u8], signature: bool) -> Vec<u8> {
        let mut s = vec![0u8; 512];
        s[at..at + bytes.len()].copy_from_slice(bytes);
        if signature {
            s[510] = 0x55;
            s[511] = 0xAA;
        }
        s
    }

    #[test]
    fn classifies_ntfs_and_bitlocker() {
        assert_eq!(classify(&sector_with(3, b"NTFS    ", true)), FsKind::Ntfs);
        assert_eq!(
            classify(&sector_with(3, b"-FVE-FS-", true)),
            FsKind::Bitlocker
        );
        // The OEM id alone decides for NTFS; the signature is not required.
        assert_eq!(classify(&sector_with(3, b"NTFS    ", false)), FsKind::Ntfs);
    }

    #[test]
    fn classifies_fat() {
        assert_eq!(classify(&sector_with(0x52, b"FAT32   ", true)), FsKind::Fat);
        assert_eq!(classify(&sector_with(0x36, b"FAT16   ", true)), FsKind::Fat);
        assert_eq!(classify(&sector_with(0x36, b"FAT12   ", true)), FsKind::Fat);
        // FAT without the 0x55AA signature is not trusted.
        assert_eq!(
            classify(&sector_with(0x52, b"FAT32   ", false)),
            FsKind::Unknown
        );
    }

    #[test]
    fn fat_without_a_type_string_and_bitlocker_to_go() {
        // mkfs.fat's FAT16 BPB with BS_FilSysType blanked.
        let mut s = sector_with(3, b"mkfs.fat", true);
        s[0..3].copy_from_slice(&[0xEB, 0x3C, 0x90]);
        s[11..13].copy_from_slice(&512u16.to_le_bytes());
        s[13] = 4;
        s[14..16].copy_from_slice(&4u16.to_le_bytes());
        s[16] = 2;
        s[21] = 0xF8;
        assert_eq!(classify(&s), FsKind::Fat);
        s[16] = 7;
        assert_eq!(classify(&s), FsKind::Unknown, "seven FATs is not FAT");
        // To Go: a FAT boot sector whose identifier says BitLocker.
        let mut t = sector_with(0x52, b"FAT32   ", true);
        t[3..11].copy_from_slice(b"MSWIN4.1");
        assert_eq!(classify(&t), FsKind::Fat, "MSWIN4.1 alone is plain FAT");
        crate::volstate::mark_to_go_for_tests(&mut t);
        assert_eq!(classify(&t), FsKind::Bitlocker);
    }

    #[test]
    fn unknown_for_short_blank_and_mbr() {
        assert_eq!(classify(&[]), FsKind::Unknown);
        assert_eq!(classify(&[0u8; 100]), FsKind::Unknown);
        assert_eq!(classify(&[0u8; 512]), FsKind::Unknown);
        // A protective MBR has the signature but no filesystem type.
        assert_eq!(
            classify(&sector_with(0x1BE, &[0, 0, 2, 0, 0xEE], true)),
            FsKind::Unknown
        );
        // exFAT has its own OEM id and its own name.
        assert_eq!(classify(&sector_with(3, b"EXFAT   ", true)), FsKind::Exfat);
    }

    #[test]
    fn reads_fat_labels() {
        let mut s = sector_with(0x52, b"FAT32   ", true);
        s[0x47..0x52].copy_from_slice(b"DEFIB      ");
        assert_eq!(fat_label(&s).as_deref(), Some("DEFIB"));
        let mut s = sector_with(0x36, b"FAT16   ", true);
        s[0x2B..0x36].copy_from_slice(b"NO NAME    ");
        assert_eq!(fat_label(&s), None);
        assert_eq!(fat_label(&sector_with(3, b"NTFS    ", true)), None);
    }

    #[test]
    fn bus_from_sysfs_paths() {
        let p = |s| bus_from_path(s);
        assert_eq!(
            p("../../devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb"),
            Bus::Usb
        );
        assert_eq!(
            p("../../devices/pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1"),
            Bus::Nvme
        );
        assert_eq!(
            p("../../devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda"),
            Bus::Ata
        );
        assert_eq!(
            p("../../devices/pci0000:00/0000:00:04.0/virtio2/block/vda"),
            Bus::Virtio
        );
        assert_eq!(
            p("../../devices/pci0000:00/0000:00:10.0/host2/target2:0:0/2:0:0:0/block/sdc"),
            Bus::Scsi
        );
        assert_eq!(p("../../devices/virtual/block/loop0"), Bus::Unknown);
    }

    /// Builds a realistic fake tree: devices under sys/devices, symlinks in
    /// sys/class/block, nodes in dev as plain files.
    pub struct FakeDisk<'a> {
        pub root: &'a Path,
    }

    impl FakeDisk<'_> {
        /// Adds disk `name` at `devpath` (relative to sys/devices).
        pub fn disk(&self, devpath: &str, name: &str, removable: bool, sector: &[u8]) {
            let dir = self
                .root
                .join("sys/devices")
                .join(devpath)
                .join("block")
                .join(name);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("size"), "2048\n").unwrap();
            fs::write(dir.join("removable"), if removable { "1\n" } else { "0\n" }).unwrap();
            fs::write(
                dir.join("uevent"),
                format!("MAJOR=8\nDEVNAME={name}\nDEVTYPE=disk\n"),
            )
            .unwrap();
            self.link(&format!("{devpath}/block/{name}"), name, sector);
        }

        /// Adds partition `name` of disk `disk` at `devpath`.
        pub fn part(&self, devpath: &str, disk: &str, name: &str, partname: &str, sector: &[u8]) {
            let rel = format!("{devpath}/block/{disk}/{name}");
            let dir = self.root.join("sys/devices").join(&rel);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("size"), "1024\n").unwrap();
            fs::write(dir.join("partition"), "1\n").unwrap();
            fs::write(
                dir.join("uevent"),
                format!(
                    "MAJOR=8\nDEVNAME={name}\nDEVTYPE=partition\nPARTN=1\nPARTNAME={partname}\n"
                ),
            )
            .unwrap();
            self.link(&rel, name, sector);
        }

        fn link(&self, rel: &str, name: &str, sector: &[u8]) {
            let class = self.root.join("sys/class/block");
            fs::create_dir_all(&class).unwrap();
            symlink(format!("../../devices/{rel}"), class.join(name)).unwrap();
            fs::create_dir_all(self.root.join("dev")).unwrap();
            fs::write(self.root.join("dev").join(name), sector).unwrap();
        }
    }

    pub const USB: &str = "pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0";
    pub const NVME: &str = "pci0000:00/0000:00:1d.0/nvme/nvme0";

    #[test]
    fn probes_a_fake_tree() {
        let dir = tempfile::tempdir().unwrap();
        let t = FakeDisk { root: dir.path() };
        t.disk(NVME, "nvme0n1", false, &[0u8; 512]);
        t.part(
            NVME,
            "nvme0n1",
            "nvme0n1p3",
            "Basic data partition",
            &sector_with(3, b"NTFS    ", true),
        );
        t.disk(USB, "sdb", true, &[0u8; 512]);
        t.part(
            USB,
            "sdb",
            "sdb1",
            "DEFIB",
            &sector_with(0x52, b"FAT32   ", true),
        );
        // Loop devices are skipped even if present.
        fs::create_dir_all(dir.path().join("sys/class/block/loop0")).unwrap();

        let p = probe(dir.path(), Some("sdb1"));
        let names: Vec<_> = p.volumes.iter().map(|v| v.device.as_str()).collect();
        assert_eq!(names, ["nvme0n1", "nvme0n1p3", "sdb", "sdb1"]);
        let ntfs = &p.volumes[1];
        assert_eq!(
            (ntfs.fs, ntfs.bus, ntfs.removable, ntfs.partition),
            (FsKind::Ntfs, Bus::Nvme, false, true)
        );
        assert_eq!(ntfs.size_bytes, 1024 * 512);
        let stick = &p.volumes[3];
        assert_eq!(
            (stick.fs, stick.bus, stick.removable),
            (FsKind::Fat, Bus::Usb, true)
        );
        assert!(stick.boot_medium && p.volumes[2].boot_medium);
        assert!(!p.volumes[0].boot_medium);
        assert_eq!(p.windows_candidates().count(), 1);
        assert!(p.messages.is_empty());

        let sdb1 = list_block(dir.path())
            .unwrap()
            .into_iter()
            .find(|d| d.name == "sdb1")
            .unwrap();
        assert_eq!(sdb1.parent.as_deref(), Some("sdb"));
        assert_eq!(sdb1.partname.as_deref(), Some("DEFIB"));
    }

    #[test]
    fn unreadable_device_is_a_message() {
        let dir = tempfile::tempdir().unwrap();
        let t = FakeDisk { root: dir.path() };
        t.disk(NVME, "nvme0n1", false, &[0u8; 10]);
        let p = probe(dir.path(), None);
        assert_eq!(p.volumes[0].fs, FsKind::Unknown);
        assert_eq!(p.messages.len(), 1);
    }
}
