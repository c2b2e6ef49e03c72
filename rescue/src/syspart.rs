//! The system partition of the disk a Windows volume is on: where the boot
//! manager and its BCD store live. On a GPT disk the EFI system partition
//! (type `C12A7328-F81F-11D2-BA4B-00A0C93EC93B`, UEFI spec § 5.3.3); on an
//! MBR disk the active partition (boot indicator `0x80`), which BIOS
//! Windows setups make a small "System Reserved" NTFS partition, or which
//! is the Windows volume itself.
//!
//! Reads `/sys/class/block` and the disk's first sectors under a root, so
//! it runs on fake trees in tests; mounting is the caller's
//! (`volumes::KernelVolumes`).

use crate::probe::{classify, list_block, FsKind};
use anyhow::{Context, Result};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The EFI system partition type GUID as GPT stores it (the first three
/// fields little-endian).
const ESP_TYPE: [u8; 16] = [
    0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B,
];

/// A system partition found for a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemPartition {
    /// Kernel name (`sda1`).
    pub name: String,
    /// Its file system, from its first sector.
    pub fs: FsKind,
    /// True for a GPT EFI system partition, false for an MBR active one.
    pub esp: bool,
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The partition below a device-mapper node (a BitLocker volume defib
/// mapped): the one entry of its `slaves` folder.
fn underlying(root: &Path, name: &str) -> String {
    let slaves = root.join("sys/class/block").join(name).join("slaves");
    match std::fs::read_dir(&slaves) {
        Ok(rd) => {
            let names: Vec<String> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if names.len() == 1 {
                names[0].clone()
            } else {
                name.to_string()
            }
        }
        Err(_) => name.to_string(),
    }
}

/// Which partition number (1-based, as the kernel's `partition` file
/// counts) is the system partition, from the disk's first sectors:
/// `(number, is_esp)`.
pub fn system_partition_number(
    disk: &mut (impl Read + Seek),
    sector: u64,
) -> Result<Option<(u32, bool)>> {
    let mut s0 = vec![0u8; 512];
    disk.seek(SeekFrom::Start(0))?;
    disk.read_exact(&mut s0)
        .context("reading the partition table")?;
    let mut hdr = vec![0u8; 92];
    disk.seek(SeekFrom::Start(sector))?;
    let gpt = disk.read_exact(&mut hdr).is_ok() && &hdr[0..8] == b"EFI PART";
    if gpt {
        let u32at =
            |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let lba = u64::from_le_bytes(hdr[0x48..0x50].try_into().expect("8 bytes"));
        let count = u32at(&hdr, 0x50);
        let size = u32at(&hdr, 0x54) as usize;
        anyhow::ensure!(
            (128..=4096).contains(&size) && count <= 1024,
            "the GPT header names {count} entries of {size} bytes"
        );
        let at = lba
            .checked_mul(sector)
            .context("GPT entries lie past the disk")?;
        disk.seek(SeekFrom::Start(at))?;
        let mut table = vec![0u8; size * count as usize];
        disk.read_exact(&mut table)
            .context("reading the GPT partition entries")?;
        for (i, e) in table.chunks_exact(size).enumerate() {
            if e[..16] == ESP_TYPE {
                return Ok(Some((i as u32 + 1, true)));
            }
        }
        return Ok(None);
    }
    if s0[510..512] != [0x55, 0xAA] {
        return Ok(None);
    }
    for i in 0..4 {
        let e = &s0[0x1BE + 16 * i..0x1BE + 16 * (i + 1)];
        // A protective MBR (type 0xEE) never marks a partition active.
        if e[0] == 0x80 && e[4] != 0 && e[4] != 0xEE {
            return Ok(Some((i as u32 + 1, false)));
        }
    }
    Ok(None)
}

/// The system partition of the disk `dev` is on, unless `dev` is that
/// partition itself (then the Windows volume holds its own `\Boot\BCD`).
pub fn find(root: &Path, dev: &str) -> Result<Option<SystemPartition>> {
    let name = underlying(root, dev.trim_start_matches("/dev/"));
    let all = list_block(root).context("listing block devices")?;
    let Some(me) = all.iter().find(|b| b.name == name) else {
        return Ok(None);
    };
    let Some(disk) = me.parent.clone() else {
        return Ok(None);
    };
    let sector = read_trim(
        &root
            .join("sys/class/block")
            .join(&disk)
            .join("queue/logical_block_size"),
    )
    .and_then(|s| s.parse::<u64>().ok())
    .filter(|s| [512, 1024, 2048, 4096].contains(s))
    .unwrap_or(512);
    let path = crate::probe::dev_path(root, &disk);
    let mut f =
        std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let Some((number, esp)) = system_partition_number(&mut f, sector)
        .with_context(|| format!("reading the partition table of /dev/{disk}"))?
    else {
        return Ok(None);
    };
    let part = all.iter().find(|b| {
        b.parent.as_deref() == Some(disk.as_str())
            && read_trim(&root.join("sys/class/block").join(&b.name).join("partition"))
                .and_then(|n| n.parse::<u32>().ok())
                == Some(number)
    });
    let Some(part) = part else {
        return Ok(None);
    };
    if part.name == name {
        return Ok(None);
    }
    let first = crate::probe::first_sector(root, &part.name)
        .with_context(|| format!("reading /dev/{}", part.name))?;
    Ok(Some(SystemPartition {
        name: part.name.clone(),
        fs: classify(&first),
        esp,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::os::unix::fs::symlink;

    fn gpt_disk(esp_index: Option<usize>) -> Vec<u8> {
        let mut d = vec![0u8; 512 * 40];
        d[510] = 0x55;
        d[511] = 0xAA;
        d[0x1BE + 4] = 0xEE;
        let h = 512;
        d[h..h + 8].copy_from_slice(b"EFI PART");
        d[h + 0x48..h + 0x50].copy_from_slice(&2u64.to_le_bytes());
        d[h + 0x50..h + 0x54].copy_from_slice(&4u32.to_le_bytes());
        d[h + 0x54..h + 0x58].copy_from_slice(&128u32.to_le_bytes());
        // Partition 1: Microsoft basic data; the ESP where asked.
        d[1024] = 0xA2;
        if let Some(i) = esp_index {
            d[1024 + 128 * i..1024 + 128 * i + 16].copy_from_slice(&ESP_TYPE);
        }
        d
    }

    #[test]
    fn finds_the_esp_by_type_and_the_active_mbr_partition() {
        let d = gpt_disk(Some(1));
        assert_eq!(
            system_partition_number(&mut Cursor::new(d), 512).unwrap(),
            Some((2, true))
        );
        assert_eq!(
            system_partition_number(&mut Cursor::new(gpt_disk(None)), 512).unwrap(),
            None
        );
        let mut mbr = vec![0u8; 4096];
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        mbr[0x1BE + 4] = 0x07;
        mbr[0x1CE] = 0x80;
        mbr[0x1CE + 4] = 0x07;
        assert_eq!(
            system_partition_number(&mut Cursor::new(mbr.clone()), 512).unwrap(),
            Some((2, false))
        );
        mbr[0x1CE] = 0;
        assert_eq!(
            system_partition_number(&mut Cursor::new(mbr), 512).unwrap(),
            None
        );
        // A header with absurd entry sizes is an error, not an allocation.
        let mut bad = gpt_disk(Some(0));
        bad[512 + 0x54..512 + 0x58].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(system_partition_number(&mut Cursor::new(bad), 512).is_err());
    }

    /// A disk `vda` with partitions vda1 (ESP, FAT) and vda2 (Windows).
    fn tree(root: &Path) {
        let disk = root.join("sys/devices/pci0000:00/virtio1/block/vda");
        for (n, name) in [(1, "vda1"), (2, "vda2")] {
            std::fs::create_dir_all(disk.join(name)).unwrap();
            std::fs::write(disk.join(name).join("partition"), format!("{n}\n")).unwrap();
        }
        std::fs::create_dir_all(root.join("sys/class/block")).unwrap();
        std::fs::create_dir_all(root.join("dev")).unwrap();
        symlink(
            "../../devices/pci0000:00/virtio1/block/vda",
            root.join("sys/class/block/vda"),
        )
        .unwrap();
        for name in ["vda1", "vda2"] {
            symlink(
                format!("../../devices/pci0000:00/virtio1/block/vda/{name}"),
                root.join("sys/class/block").join(name),
            )
            .unwrap();
        }
        std::fs::write(root.join("dev/vda"), gpt_disk(Some(0))).unwrap();
        let mut fat = vec![0u8; 512];
        fat[0x52..0x5A].copy_from_slice(b"FAT32   ");
        fat[510] = 0x55;
        fat[511] = 0xAA;
        std::fs::write(root.join("dev/vda1"), fat).unwrap();
        let mut ntfs = vec![0u8; 512];
        ntfs[3..11].copy_from_slice(b"NTFS    ");
        std::fs::write(root.join("dev/vda2"), ntfs).unwrap();
    }

    #[test]
    fn the_windows_volume_leads_to_the_esp_on_its_disk() {
        let d = tempfile::tempdir().unwrap();
        tree(d.path());
        let sp = find(d.path(), "vda2").unwrap().unwrap();
        assert_eq!(
            sp,
            SystemPartition {
                name: "vda1".into(),
                fs: FsKind::Fat,
                esp: true
            }
        );
        // The ESP itself has no other system partition.
        assert_eq!(find(d.path(), "vda1").unwrap(), None);
        // A BitLocker mapping leads to its partition through `slaves`.
        let dm = d.path().join("sys/devices/virtual/block/dm-0");
        std::fs::create_dir_all(dm.join("slaves/vda2")).unwrap();
        symlink(
            "../../devices/virtual/block/dm-0",
            d.path().join("sys/class/block/dm-0"),
        )
        .unwrap();
        assert_eq!(find(d.path(), "dm-0").unwrap().unwrap().name, "vda1");
    }
}
