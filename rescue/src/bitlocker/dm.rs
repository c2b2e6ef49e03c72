//! The device-mapper layout that shows a BitLocker volume as its plain
//! (NTFS or FAT) volume, the way cryptsetup activates BITLK:
//!
//! - the volume's first `volume_header_size` bytes come, decrypted, from
//!   where Windows relocated them (`volume_header_offset`);
//! - the three 64 KiB FVE metadata areas and the relocated header's own
//!   place read as zeros (`zero` target);
//! - everything else is `crypt` mapped onto the same place, with the IV
//!   counted from the start of the BitLocker volume (`iv_offset` = device
//!   offset), so a sector's IV is always its position on disk;
//! - 4 KiB-sector volumes add `sector_size:4096 iv_large_sectors` so the
//!   IV counts 4 KiB sectors, as Windows does.
//!
//! This computes and renders; it does NOT create the device (the rescue's
//! kernel layer does, and only QEMU can prove it here: the build host has no
//! device-mapper). [`super::soft`] follows the same plan in software, which
//! is how the layout is checked against the corpus' known plain hashes.

use super::metadata::{Metadata, FVE_AREA_SIZE};
use super::{EncryptionMethod, VolumeKey};
use anyhow::{ensure, Context, Result};
use std::fmt::Write;
use zeroize::Zeroizing;

/// Device-mapper counts 512-byte sectors whatever the device's sector size.
pub const DM_SECTOR: u64 = 512;

/// What one segment maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Reads zeros, drops writes: metadata areas and the relocated header.
    Zero,
    /// dm-crypt over the BitLocker volume at `device_offset` (512-byte
    /// sectors), IVs counted from `iv_offset` (512-byte sectors).
    Crypt { device_offset: u64, iv_offset: u64 },
}

/// One line of the table, in 512-byte sectors of the mapped device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub start: u64,
    pub len: u64,
    pub target: Target,
}

/// The whole mapping. Holds no key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub method: EncryptionMethod,
    /// 512 or 4096.
    pub sector_size: u32,
    /// Bytes of the mapped device (the BitLocker volume's length, rounded
    /// down to whole sectors).
    pub device_len: u64,
    /// Sorted by `start`, contiguous from 0 to `device_len`.
    pub segments: Vec<Segment>,
}

/// Computes the mapping for a volume of `device_len` bytes. Fails with a
/// [`super::Refusal`] inside the error (downcast it) when the volume must
/// not be mapped, and with a plain error when its layout is inconsistent
/// (areas past the end, misaligned, overlapping the relocated header).
pub fn plan(meta: &Metadata, device_len: u64) -> Result<Plan> {
    if let Some(r) = meta.refusal_for_device(device_len) {
        return Err(anyhow::Error::new(r));
    }
    let method = meta.method.context("unknown encryption method")?;
    let ss = u64::from(meta.sector_size);
    let device_len = device_len - device_len % ss;
    let (vh_off, vh_len) = (meta.volume_header_offset, meta.volume_header_size);
    ensure!(
        vh_len > 0 && vh_len % ss == 0 && vh_off % ss == 0,
        "relocated volume header ({vh_len} bytes at {vh_off}) is not whole {ss}-byte sectors"
    );
    ensure!(
        vh_off.checked_add(vh_len).is_some_and(|e| e <= device_len) && vh_len <= device_len,
        "relocated volume header ({vh_len} bytes at {vh_off}) lies past the volume's end ({device_len})"
    );

    // Byte ranges that read as zeros. They may touch (Windows often puts the
    // relocated header right after the first metadata area) but must not
    // overlap; touching ones stay separate segments, as cryptsetup emits
    // them, so a `dmsetup table` of either compares line for line.
    let mut holes: Vec<(u64, u64)> = Vec::new();
    for (i, &off) in meta.metadata_offsets.iter().enumerate() {
        ensure!(
            off % ss == 0
                && off
                    .checked_add(FVE_AREA_SIZE)
                    .is_some_and(|e| e <= device_len),
            "metadata area {} at {off} is misaligned or past the volume's end ({device_len})",
            i + 1
        );
        holes.push((off, off + FVE_AREA_SIZE));
    }
    holes.push((vh_off, vh_off + vh_len));
    holes.sort_unstable();
    for w in holes.windows(2) {
        ensure!(
            w[1].0 >= w[0].1,
            "BitLocker reserved ranges overlap ({}..{} and {}..{}): damaged metadata",
            w[0].0,
            w[0].1,
            w[1].0,
            w[1].1
        );
    }
    ensure!(
        holes[0].0 >= vh_len,
        "a metadata area overlaps the volume's first {vh_len} bytes, where the relocated header is shown"
    );

    let mut segments = vec![Segment {
        start: 0,
        len: vh_len / DM_SECTOR,
        target: Target::Crypt {
            device_offset: vh_off / DM_SECTOR,
            iv_offset: vh_off / DM_SECTOR,
        },
    }];
    let mut at = vh_len;
    let identity = |from: u64, to: u64, segs: &mut Vec<Segment>| {
        if to > from {
            segs.push(Segment {
                start: from / DM_SECTOR,
                len: (to - from) / DM_SECTOR,
                target: Target::Crypt {
                    device_offset: from / DM_SECTOR,
                    iv_offset: from / DM_SECTOR,
                },
            });
        }
    };
    for (s, e) in holes {
        identity(at, s, &mut segments);
        segments.push(Segment {
            start: s / DM_SECTOR,
            len: (e - s) / DM_SECTOR,
            target: Target::Zero,
        });
        at = e;
    }
    identity(at, device_len, &mut segments);
    Ok(Plan {
        method,
        sector_size: meta.sector_size,
        device_len,
        segments,
    })
}

impl Plan {
    /// The segment holding mapped byte `pos`.
    pub fn segment_at(&self, pos: u64) -> Option<&Segment> {
        let sector = pos / DM_SECTOR;
        let i = self.segments.partition_point(|s| s.start + s.len <= sector);
        self.segments.get(i).filter(|s| s.start <= sector)
    }

    /// Byte ranges of the plain volume that read as zeros and cannot hold
    /// data (the metadata areas and the relocated header's own place): a
    /// fixture's plain volume must leave them zero. A volume Windows
    /// encrypted already has them allocated to its hidden FVE files, so
    /// editing such a volume's file system keeps them free.
    pub fn reserved_ranges(&self) -> Vec<(u64, u64)> {
        self.segments
            .iter()
            .filter(|s| s.target == Target::Zero)
            .map(|s| (s.start * DM_SECTOR, (s.start + s.len) * DM_SECTOR))
            .collect()
    }

    /// A key-free description, one line per segment, for logs and reports.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for seg in &self.segments {
            let _ = match seg.target {
                Target::Zero => writeln!(s, "{} {} zero", seg.start, seg.len),
                Target::Crypt {
                    device_offset,
                    iv_offset,
                } => writeln!(
                    s,
                    "{} {} crypt {} <key> {iv_offset} <device> {device_offset}{}",
                    seg.start,
                    seg.len,
                    self.method.dm_cipher(),
                    self.options()
                ),
            };
        }
        s
    }

    fn options(&self) -> String {
        if self.sector_size == 512 {
            String::new()
        } else {
            // cryptsetup's order: flags first, then sector_size.
            format!(" 2 iv_large_sectors sector_size:{}", self.sector_size)
        }
    }
}

/// The table text for `dmsetup create`/the DM ioctls: one line per
/// segment, `crypt` lines carrying the key in hex. The result is secret:
/// it is wiped on drop; never log it (log [`Plan::describe`] instead).
pub fn render_table(plan: &Plan, key: &VolumeKey, device: &str) -> Result<Zeroizing<String>> {
    ensure!(
        key.method == plan.method,
        "the key is for {}, the volume uses {}",
        key.method.name(),
        plan.method.name()
    );
    ensure!(
        !device.is_empty() && !device.chars().any(char::is_whitespace),
        "device path {device:?} cannot go in a table line"
    );
    let hex = key.dm_hex();
    let mut out = Zeroizing::new(String::new());
    for seg in &plan.segments {
        let _ = match seg.target {
            Target::Zero => writeln!(out, "{} {} zero", seg.start, seg.len),
            Target::Crypt {
                device_offset,
                iv_offset,
            } => writeln!(
                out,
                "{} {} crypt {} {} {iv_offset} {device} {device_offset}{}",
                seg.start,
                seg.len,
                plan.method.dm_cipher(),
                hex.as_str(),
                plan.options()
            ),
        };
    }
    Ok(out)
}
