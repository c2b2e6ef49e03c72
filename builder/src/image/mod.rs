//! The USB image: a GPT disk holding one FAT32 EFI System Partition, and the
//! reader `defib inspect` and the tests use to look inside a built image or
//! a used stick.
//!
//! Layout (512-byte logical blocks, UEFI 2.10 §5.3.1):
//!
//! ```text
//! LBA 0            protective MBR            (UEFI 2.10 §5.2.3)
//! LBA 1..33        primary GPT header + entries (UEFI 2.10 §5.3.2, §5.3.3)
//! LBA 2048..       the ESP, FAT32, 1 MiB aligned and sized
//! last 1 MiB       backup GPT entries + header at the last LBA
//! ```
//!
//! This is not a partitioning tool: it writes exactly this layout, and reads
//! back only what it needs (the ESP of a GPT disk with 512-byte blocks).
//! Everything derived from randomness elsewhere (disk GUID, partition GUID,
//! FAT volume id) comes from `EspSpec::seed`, and every FAT timestamp is
//! `EspSpec::mtime`, so the same spec gives the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{anyhow, bail, Context, Result};
use fatfs::{Date, DateTime, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider};
use fscommon::{BufStream, StreamSlice};
use gpt::disk::LogicalBlockSize;
use gpt::partition::Partition;
use serde::Serialize;
use sha2::{Digest, Sha256};

mod dotfix;
mod edit;
mod read;
#[cfg(test)]
mod tests;
mod write;

pub use edit::{add_file_to_image, restamp_esp, with_esp, EspOps};
pub use read::{DirEntryInfo, UsbImage};
pub use write::{fat_image, write_usb_image};
#[allow(unused_imports)]
use {edit::*, read::*, write::*};

pub use fatfs::FatType;

/// Logical block size we write and expect, UEFI 2.10 §5.3.1. USB sticks
/// and image files are 512-byte devices.
const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
/// The ESP starts at 1 MiB (LBA 2048): the alignment every modern
/// partitioner uses, and well past the 33 LBAs of the primary GPT.
const ESP_START: u64 = MIB;
/// Room after the ESP for the backup GPT (UEFI 2.10 §5.3.2: header in the
/// last LBA, 16 KiB of entries before it); a whole MiB keeps the size round.
const TAIL: u64 = MIB;
/// fatgen103 §3.5 "FAT Type Determination": FAT32 iff the data region has
/// at least 65525 clusters. We aim a little above it so rounding in the
/// FAT-size calculation can never drop us to FAT16.
const FAT32_MIN_CLUSTERS: u64 = 65525;
const FAT32_TARGET_CLUSTERS: u64 = FAT32_MIN_CLUSTERS + 2048;
/// fatfs 0.3 formats FAT32 with 8 reserved sectors (boot, FSInfo, backup
/// boot at 6) and 2 FATs (fatgen103 §3.1 BPB_RsvdSecCnt, BPB_NumFATs).
const FAT_RESERVED_SECTORS: u64 = 8;
const FAT_COPIES: u64 = 2;
/// FAT32 entries are 4 bytes (fatgen103 §4), directory entries 32 bytes
/// and one long-name entry holds 13 UTF-16 units (fatgen103 §6, §7).
const FAT32_ENTRY: u64 = 4;
const DIR_ENTRY: u64 = 32;
const LFN_CHARS: u64 = 13;
/// BPB_HiddSec, fatgen103 §3.1: offset 28 in the boot sector, sectors
/// before the volume. Set to the ESP's start for BIOS boot loaders.
const BPB_HIDDEN_SECTORS: u64 = 28;
/// BPB_BkBootSec as written by fatfs 0.3 (fatgen103 §3.3: recommended 6).
const BACKUP_BOOT_SECTOR: u64 = 6;
/// GPT attribute bit 2, "Legacy BIOS Bootable", UEFI 2.10 §5.3.3 table 5.8.
const ATTR_LEGACY_BIOS_BOOTABLE: u64 = 1 << 2;
/// Cluster sizes tried, largest first (fatgen103 §3.1 BPB_SecPerClus: any
/// power of two). 4 KiB is the cap: bigger clusters only waste space on
/// our many small files; smaller ones keep small volumes FAT32.
const CLUSTER_SIZES: [u32; 4] = [4096, 2048, 1024, 512];

/// What goes on the ESP.
#[derive(Clone)]
pub struct EspSpec {
    /// FAT paths with `/` separators, e.g. `EFI/BOOT/BOOTX64.EFI`.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Files copied from the build host when the volume is written, one at
    /// a time, so a store of any size never sits in the builder's memory:
    /// FAT path -> host path. A path must not also be in `files`.
    pub from_disk: BTreeMap<String, PathBuf>,
    /// Extra (empty) directories, e.g. `reports`.
    pub dirs: Vec<String>,
    /// FAT volume label and GPT partition name: 1 to 11 chars of A-Z 0-9 _ -.
    pub label: String,
    /// Bytes left free for reports. The caller picks the default.
    pub free_space: u64,
    /// Derives the disk GUID, the partition GUID and the FAT volume id.
    pub seed: [u8; 32],
    /// SOURCE_DATE_EPOCH; FAT timestamps, clamped to 1980..=2107.
    pub mtime: u64,
    /// Sets GPT attribute bit 2 so gptmbr.bin/syslinux boot it on BIOS.
    pub legacy_bios_bootable: bool,
}

/// What was written, for logs and the build summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSummary {
    pub size: u64,
    pub esp_offset: u64,
    pub esp_size: u64,
    pub disk_guid: String,
    pub esp_guid: String,
    pub fat_volume_id: u32,
    pub cluster_size: u32,
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// Proper ancestors of a FAT path: "EFI/BOOT/X" -> "EFI", "EFI/BOOT".
fn fat_parents(path: &str) -> impl Iterator<Item = &str> {
    let path = path.trim_matches('/');
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

fn check_label(label: &str) -> Result<()> {
    // fatgen103 §6: the label is an 11-byte short name; we keep to the
    // subset every firmware and OS displays the same way.
    let ok = !label.is_empty()
        && label.len() <= 11
        && label
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !ok {
        bail!("volume label {label:?} must be 1 to 11 characters of A-Z, 0-9, _ or -");
    }
    Ok(())
}

fn check_fat_path(path: &str) -> Result<()> {
    let p = path.trim_matches('/');
    if p.is_empty() {
        bail!("ESP path {path:?} is empty");
    }
    for comp in p.split('/') {
        // fatgen103 §7: characters a long name may not contain.
        let bad = comp.is_empty()
            || comp == "."
            || comp == ".."
            || comp.len() > 255
            || comp
                .chars()
                .any(|c| c.is_control() || "\"*:<>?\\|".contains(c));
        if bad {
            bail!("ESP path {path:?} has an invalid component {comp:?}");
        }
    }
    Ok(())
}

/// A fatfs time provider that always answers one instant.
///
/// fatfs 0.3 wants `&'static dyn TimeProvider`, so each distinct instant is
/// leaked once per process and cached: a builder uses one or two
/// SOURCE_DATE_EPOCH values in its life, a few dozen bytes each.
#[derive(Debug)]
struct FixedTime(DateTime);

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> DateTime {
        self.0
    }
}

fn fixed_time_provider(epoch: u64) -> &'static FixedTime {
    static CACHE: OnceLock<Mutex<BTreeMap<u64, &'static FixedTime>>> = OnceLock::new();
    let when = fixed_date_time(epoch);
    // Key on the clamped value so out-of-range epochs share one entry.
    let key = u64::from(when.date.year) << 40
        | u64::from(when.date.month) << 32
        | u64::from(when.date.day) << 24
        | u64::from(when.time.hour) << 16
        | u64::from(when.time.min) << 8
        | u64::from(when.time.sec);
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    cache
        .entry(key)
        .or_insert_with(|| Box::leak(Box::new(FixedTime(when))))
}

fn fs_options(epoch: u64) -> FsOptions {
    // Accessed-date updates stay off (the default): reading must not write.
    FsOptions::new().time_provider(fixed_time_provider(epoch))
}

/// Seconds since 1970 (UTC) as a FAT date-time, clamped to the range FAT
/// can hold: 1980-01-01 00:00:00 to 2107-12-31 23:59:58 (fatgen103 §7).
fn fixed_date_time(epoch: u64) -> DateTime {
    const FAT_EPOCH: u64 = 315_532_800; // 1980-01-01T00:00:00Z
    let days = epoch.max(FAT_EPOCH) / 86_400;
    let secs = epoch.max(FAT_EPOCH) % 86_400;
    let (y, m, d) = civil_from_days(days);
    if y > 2107 {
        return DateTime {
            date: Date {
                year: 2107,
                month: 12,
                day: 31,
            },
            time: Time {
                hour: 23,
                min: 59,
                sec: 58,
                millis: 0,
            },
        };
    }
    DateTime {
        date: Date {
            year: y as u16,
            month: m as u16,
            day: d as u16,
        },
        time: Time {
            hour: (secs / 3600) as u16,
            min: (secs / 60 % 60) as u16,
            // Modify times have 2-second resolution; keep every stamp equal.
            sec: (secs % 60 / 2 * 2) as u16,
            millis: 0,
        },
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), by
/// counting 400-year eras from 0000-03-01 so leap days fall at era ends.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z / 146_097; // days per 400 years
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153; // month from March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + yoe + u64::from(month <= 2);
    (year, month, day)
}
