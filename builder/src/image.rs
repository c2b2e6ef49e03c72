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

/// Builds the image at `out`. Writes to `.<name>.tmp-<pid>` beside it,
/// fsyncs, and renames over `out` only when everything succeeded.
pub fn write_usb_image(spec: &EspSpec, out: &Path) -> Result<ImageSummary> {
    check_label(&spec.label)?;
    for path in spec.files.keys().chain(&spec.dirs) {
        check_fat_path(path)?;
    }
    let (cluster_size, esp_size) = plan_esp(spec)?;
    let total = ESP_START + esp_size + TAIL;

    let name = out
        .file_name()
        .ok_or_else(|| anyhow!("{}: not a file path", out.display()))?
        .to_string_lossy();
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = TempFile(dir.join(format!(".{name}.tmp-{}", std::process::id())));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp.0)
        .with_context(|| format!("creating {}", tmp.0.display()))?;
    // A sparse file of the final size: unwritten ranges read as zeros,
    // which is exactly what the free clusters and GPT gaps should hold.
    file.set_len(total)
        .with_context(|| format!("sizing {} to {total} bytes", tmp.0.display()))?;

    let ids = Ids::from_seed(&spec.seed);
    write_gpt(&mut file, spec, esp_size, total, &ids)
        .with_context(|| format!("writing the GPT to {}", tmp.0.display()))?;
    write_fat(&mut file, spec, esp_size, cluster_size, ids.volume_id)
        .with_context(|| format!("writing the FAT32 ESP to {}", tmp.0.display()))?;

    file.sync_all()
        .with_context(|| format!("syncing {}", tmp.0.display()))?;
    drop(file);
    std::fs::rename(&tmp.0, out)
        .with_context(|| format!("renaming {} to {}", tmp.0.display(), out.display()))?;
    std::mem::forget(tmp);
    // Make the rename itself durable; a directory fsync is how on Linux.
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))?;

    Ok(ImageSummary {
        size: total,
        esp_offset: ESP_START,
        esp_size,
        disk_guid: ids.disk.to_string(),
        esp_guid: ids.esp.to_string(),
        fat_volume_id: ids.volume_id,
        cluster_size,
    })
}

/// Removes the temp image unless forgotten after the final rename.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        // Best effort on an error path: the original error matters more.
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The seed-derived identities. Each is SHA-256(seed || purpose), so they
/// are independent of each other and stable for a given seed.
struct Ids {
    disk: uuid::Uuid,
    esp: uuid::Uuid,
    volume_id: u32,
}

impl Ids {
    fn from_seed(seed: &[u8; 32]) -> Self {
        let h = |purpose: &[u8]| -> [u8; 32] {
            let mut d = Sha256::new();
            d.update(seed);
            d.update(purpose);
            d.finalize().into()
        };
        // from_random_bytes sets the version-4 and RFC 9562 variant bits, so
        // these look like the random GUIDs UEFI 2.10 §5.3.2 asks for.
        let guid = |purpose: &[u8]| {
            let mut b = [0u8; 16];
            b.copy_from_slice(&h(purpose)[..16]);
            uuid::Builder::from_random_bytes(b).into_uuid()
        };
        let v = h(b"fat-volume-id");
        Ids {
            disk: guid(b"disk-guid"),
            esp: guid(b"esp-guid"),
            volume_id: u32::from_le_bytes([v[0], v[1], v[2], v[3]]),
        }
    }
}

fn write_gpt(file: &mut File, spec: &EspSpec, esp_size: u64, total: u64, ids: &Ids) -> Result<()> {
    let total_lbas = total / SECTOR;
    // Protective MBR, UEFI 2.10 §5.2.3: one 0xEE record from LBA 1 covering
    // the disk, capped at 0xFFFFFFFF for disks over 2 TiB.
    let mbr_size = u32::try_from(total_lbas - 1).unwrap_or(u32::MAX);
    gpt::mbr::ProtectiveMBR::with_lb_size(mbr_size)
        .overwrite_lba0(file)
        .context("writing the protective MBR")?;

    // The gpt crate would invent a random disk GUID if given None; ours
    // comes from the seed, and the partition entry is built by hand so its
    // GUID does too (add_partition would call Uuid::new_v4).
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(&mut *file, Some(ids.disk))
        .context("initialising GPT headers")?;
    let esp = Partition {
        part_type_guid: gpt::partition_types::EFI,
        part_guid: ids.esp,
        first_lba: ESP_START / SECTOR,
        last_lba: (ESP_START + esp_size) / SECTOR - 1,
        flags: if spec.legacy_bios_bootable {
            ATTR_LEGACY_BIOS_BOOTABLE
        } else {
            0
        },
        name: spec.label.clone(),
    };
    let esp_last_lba = esp.last_lba;
    disk.update_partitions(BTreeMap::from([(1, esp)]))
        .context("adding the ESP entry")?;
    let header = disk
        .primary_header()
        .context("reading back the GPT header")?;
    if header.first_usable > ESP_START / SECTOR || header.last_usable < esp_last_lba {
        bail!("the ESP does not fit between the GPT's usable LBAs (internal sizing error)");
    }
    disk.write().context("writing GPT headers and entries")?;
    Ok(())
}

fn write_fat(
    file: &mut File,
    spec: &EspSpec,
    esp_size: u64,
    cluster_size: u32,
    volume_id: u32,
) -> Result<()> {
    let slice = StreamSlice::new(&mut *file, ESP_START, ESP_START + esp_size)
        .context("seeking to the ESP")?;
    let mut disk = BufStream::new(slice);
    let total_sectors = u32::try_from(esp_size / SECTOR)
        .map_err(|_| anyhow!("ESP of {esp_size} bytes is beyond FAT32's 2 TiB limit"))?;
    let mut label = [b' '; 11];
    label[..spec.label.len()].copy_from_slice(spec.label.as_bytes());
    fatfs::format_volume(
        &mut disk,
        FormatVolumeOptions::new()
            .fat_type(FatType::Fat32)
            .bytes_per_cluster(cluster_size)
            .bytes_per_sector(SECTOR as u16)
            .total_sectors(total_sectors)
            .volume_id(volume_id)
            .volume_label(label),
    )
    .context("formatting FAT32")?;

    // fatfs writes BPB_HiddSec = 0; firmware ignores it but BIOS-era boot
    // code (syslinux's FAT boot sector) adds it to find the volume, so set
    // it in both the boot sector and its backup (fatgen103 §3.1, §3.3).
    let hidden = u32::try_from(ESP_START / SECTOR).context("hidden sectors")?;
    for sector in [0, BACKUP_BOOT_SECTOR] {
        disk.seek(SeekFrom::Start(sector * SECTOR + BPB_HIDDEN_SECTORS))
            .context("seeking to BPB_HiddSec")?;
        disk.write_all(&hidden.to_le_bytes())
            .context("writing BPB_HiddSec")?;
    }
    disk.seek(SeekFrom::Start(0)).context("rewinding the ESP")?;

    {
        let fs =
            FileSystem::new(&mut disk, fs_options(spec.mtime)).context("mounting the new FAT32")?;
        if fs.fat_type() != FatType::Fat32 {
            bail!(
                "ESP of {esp_size} bytes with {cluster_size}-byte clusters came out as {:?}, \
                 not FAT32 (internal sizing error)",
                fs.fat_type()
            );
        }
        write_tree(&fs, spec)?;

        let stats = fs.stats().context("reading FAT statistics")?;
        let free = u64::from(stats.free_clusters()) * u64::from(stats.cluster_size());
        if free < spec.free_space {
            bail!(
                "only {free} bytes left free on the ESP, {} asked for (internal sizing error)",
                spec.free_space
            );
        }
        fs.unmount().context("unmounting the FAT32")?;
    }
    disk.flush().context("flushing the ESP")?;
    drop(disk);
    fix_dirs(file, ESP_START, esp_size)
}

/// Runs the `dotfix` pass over the ESP at `offset`.
fn fix_dirs(file: &mut File, offset: u64, size: u64) -> Result<()> {
    let mut slice =
        StreamSlice::new(&mut *file, offset, offset + size).context("seeking to the ESP")?;
    dotfix::fix_dot_entries(&mut slice).context("fixing \".\" and \"..\" directory entries")
}

/// Creates `spec.dirs` and every parent, then writes `spec.files`.
fn write_tree<T: fatfs::ReadWriteSeek>(fs: &FileSystem<T>, spec: &EspSpec) -> Result<()> {
    let root = fs.root_dir();
    {
        // Every directory once, parents first (a path sorts before the
        // paths it prefixes), then every file in path order.
        for d in &spec_dirs(spec) {
            root.create_dir(d)
                .with_context(|| format!("creating directory {d}"))?;
        }
        let when = fixed_date_time(spec.mtime);
        for (path, data) in &spec.files {
            let path = path.trim_start_matches('/');
            write_fat_file(&root, path, data, when).with_context(|| format!("writing {path}"))?;
        }
    }
    Ok(())
}

fn write_fat_file<T: fatfs::ReadWriteSeek>(
    dir: &fatfs::Dir<T>,
    path: &str,
    data: &[u8],
    when: DateTime,
) -> Result<()> {
    let mut f = dir.create_file(path).context("creating the file")?;
    f.truncate().context("truncating the file")?;
    f.write_all(data).context("writing data")?;
    // The TimeProvider already stamped create/modify; set them again so the
    // entry's times don't depend on when fatfs chose to consult it.
    #[allow(deprecated)]
    {
        f.set_created(when);
        f.set_modified(when);
        f.set_accessed(when.date);
    }
    f.flush().context("flushing the file")?;
    Ok(())
}

/// Picks the largest cluster size that still leaves a FAT32-sized cluster
/// count, and the ESP size (1 MiB multiple) for the content plus free space.
fn plan_esp(spec: &EspSpec) -> Result<(u32, u64)> {
    for &cluster in &CLUSTER_SIZES {
        let c = u64::from(cluster);
        let data = content_bytes(spec, c)?;
        let payload = data
            .checked_add(spec.free_space)
            .context("ESP size overflows")?;
        // Margin: 1 MiB plus 1/32 of the payload, for FAT rounding and the
        // short-name/long-name entries our estimate might undercount.
        let mut esp = payload + MIB + payload / 32;
        esp = round_up(esp + fat_bytes(esp, c), MIB);
        if data_clusters(esp, c) >= FAT32_TARGET_CLUSTERS {
            return Ok((cluster, esp));
        }
        if cluster == 512 {
            // Too small to be FAT32 even with the smallest clusters: grow
            // it (about 34 MiB) rather than hand firmware a FAT16 ESP.
            while data_clusters(esp, c) < FAT32_TARGET_CLUSTERS {
                esp += MIB;
            }
            return Ok((cluster, esp));
        }
    }
    unreachable!("512 is the last cluster size tried")
}

/// Both FAT copies for a volume of `esp` bytes with `cluster`-byte clusters,
/// counting an entry for every cluster plus the two reserved entries.
fn fat_bytes(esp: u64, cluster: u64) -> u64 {
    FAT_COPIES * round_up((esp / cluster + 2) * FAT32_ENTRY, SECTOR)
}

fn data_clusters(esp: u64, cluster: u64) -> u64 {
    esp.saturating_sub(FAT_RESERVED_SECTORS * SECTOR + fat_bytes(esp, cluster)) / cluster
}

/// Clusters the files and directories take, in bytes.
fn content_bytes(spec: &EspSpec, cluster: u64) -> Result<u64> {
    // Per directory: its entries' bytes. The root starts with the volume
    // label entry, every other directory with "." and "..".
    // One short entry plus the long-name entries for each child.
    fn add<'a>(path: &'a str, dirs: &mut BTreeMap<&'a str, u64>) {
        let (parent, leaf) = path.rsplit_once('/').unwrap_or(("", path));
        let lfn = (leaf.encode_utf16().count() as u64).div_ceil(LFN_CHARS);
        *dirs.entry(parent).or_insert(2 * DIR_ENTRY) += DIR_ENTRY * (1 + lfn);
    }
    let mut dirs: BTreeMap<&str, u64> = BTreeMap::from([("", DIR_ENTRY)]);
    for d in &spec_dirs(spec) {
        dirs.entry(d).or_insert(2 * DIR_ENTRY);
        add(d, &mut dirs);
    }
    let mut total: u64 = 0;
    for (path, data) in &spec.files {
        add(path.trim_start_matches('/'), &mut dirs);
        total = total
            .checked_add(round_up(data.len() as u64, cluster))
            .context("ESP size overflows")?;
    }
    for bytes in dirs.values() {
        total += round_up(*bytes, cluster);
    }
    Ok(total)
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// Every directory the ESP holds: the parents of every file, and the extra
/// dirs with their parents. Sorted, so parents come before their children.
fn spec_dirs(spec: &EspSpec) -> BTreeSet<&str> {
    let mut dirs = BTreeSet::new();
    for path in spec.files.keys() {
        dirs.extend(fat_parents(path));
    }
    for d in &spec.dirs {
        dirs.extend(fat_parents(d));
        dirs.insert(d.trim_matches('/'));
    }
    dirs
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

/// Refuses writes, so a stick opened for inspection can't be changed even
/// if fatfs decided to update something on drop.
#[derive(Debug)]
struct ReadOnly<T>(T);

impl<T: Read> Read for ReadOnly<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}
impl<T: Seek> Seek for ReadOnly<T> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}
impl<T> Write for ReadOnly<T> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "image is open read-only",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One row of `UsbImage::list_dir`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirEntryInfo {
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
}

/// A defib image file or stick, opened read-only.
#[derive(Debug, Clone)]
pub struct UsbImage {
    path: PathBuf,
    esp_offset: u64,
    esp_size: u64,
    partition_name: String,
    disk_guid: uuid::Uuid,
    esp_guid: uuid::Uuid,
}

type RoFs = FileSystem<BufStream<StreamSlice<ReadOnly<File>>>>;

impl UsbImage {
    /// Reads the GPT of `path` (an image file or a block device such as
    /// /dev/sdb) and finds its EFI System Partition.
    pub fn open(path: &Path) -> Result<UsbImage> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut dev = ReadOnly(file);
        let len = dev
            .seek(SeekFrom::End(0))
            .with_context(|| format!("reading the size of {}", path.display()))?;
        dev.seek(SeekFrom::Start(0))
            .with_context(|| format!("reading {}", path.display()))?;
        let disk = gpt::GptConfig::new()
            .writable(false)
            .logical_block_size(LogicalBlockSize::Lb512)
            .open_from_device(dev)
            .map_err(|e| {
                anyhow!(
                    "{}: no GPT found — is this a defib image? ({e})",
                    path.display()
                )
            })?;
        let (_, esp) = disk
            .partitions()
            .iter()
            .find(|(_, p)| p.part_type_guid == gpt::partition_types::EFI)
            .ok_or_else(|| anyhow!("{}: the GPT has no EFI System Partition", path.display()))?;
        // The table is input from a possibly foreign disk: check the range.
        let start = esp.first_lba.checked_mul(SECTOR);
        let end = esp
            .last_lba
            .checked_add(1)
            .and_then(|l| l.checked_mul(SECTOR));
        let (start, end) = match (start, end) {
            (Some(s), Some(e)) if s < e && e <= len => (s, e),
            _ => bail!(
                "{}: the ESP entry (LBA {}..={}) lies outside the {len}-byte disk",
                path.display(),
                esp.first_lba,
                esp.last_lba
            ),
        };
        Ok(UsbImage {
            path: path.to_path_buf(),
            esp_offset: start,
            esp_size: end - start,
            partition_name: esp.name.clone(),
            disk_guid: *disk.guid(),
            esp_guid: esp.part_guid,
        })
    }

    pub fn esp_offset(&self) -> u64 {
        self.esp_offset
    }
    pub fn esp_size(&self) -> u64 {
        self.esp_size
    }
    /// The GPT partition name (defib writes the volume label there too).
    pub fn partition_name(&self) -> &str {
        &self.partition_name
    }
    pub fn disk_guid(&self) -> String {
        self.disk_guid.to_string()
    }
    pub fn esp_guid(&self) -> String {
        self.esp_guid.to_string()
    }

    /// Mounts the ESP read-only for one operation. Opening per call keeps
    /// `UsbImage` free of borrows and sees what is on the device now.
    fn with_fs<R>(&self, f: impl FnOnce(&RoFs) -> Result<R>) -> Result<R> {
        let file =
            File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        let slice = StreamSlice::new(
            ReadOnly(file),
            self.esp_offset,
            self.esp_offset + self.esp_size,
        )
        .with_context(|| format!("seeking to the ESP of {}", self.path.display()))?;
        let fs = FileSystem::new(BufStream::new(slice), fs_options(0)).with_context(|| {
            format!("{}: the ESP is not a FAT file system", self.path.display())
        })?;
        // Dropping `fs` may try to write back FSInfo counts it computed; the
        // ReadOnly wrapper refuses and fatfs only logs that, which is what
        // we want for inspection.
        f(&fs)
    }

    /// The whole content of one file, e.g. `defib/manifest.json`.
    pub fn read_file(&self, fat_path: &str) -> Result<Vec<u8>> {
        self.with_fs(|fs| {
            let mut f = fs
                .root_dir()
                .open_file(fat_path.trim_start_matches('/'))
                .with_context(|| format!("opening {fat_path} on the ESP"))?;
            let mut data = Vec::new();
            f.read_to_end(&mut data)
                .with_context(|| format!("reading {fat_path} on the ESP"))?;
            Ok(data)
        })
    }

    /// The entries of one directory ("" or "/" is the root), sorted by
    /// name, without "." and "..".
    pub fn list_dir(&self, fat_path: &str) -> Result<Vec<DirEntryInfo>> {
        self.with_fs(|fs| {
            let p = fat_path.trim_matches('/');
            let root = fs.root_dir();
            let dir = if p.is_empty() {
                root
            } else {
                root.open_dir(p)
                    .with_context(|| format!("opening directory {fat_path} on the ESP"))?
            };
            let mut out = Vec::new();
            for e in dir.iter() {
                let e = e.with_context(|| format!("listing {fat_path} on the ESP"))?;
                let name = e.file_name();
                if name == "." || name == ".." {
                    continue;
                }
                out.push(DirEntryInfo {
                    is_dir: e.is_dir(),
                    size: if e.is_dir() { 0 } else { e.len() },
                    name,
                });
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    /// The volume label: the root-directory label entry (what Windows and
    /// Linux show), else the boot sector's copy, trailing spaces trimmed.
    pub fn volume_label(&self) -> Result<String> {
        self.with_fs(|fs| {
            let root = fs
                .read_volume_label_from_root_dir()
                .context("reading the volume label")?;
            Ok(root
                .unwrap_or_else(|| fs.volume_label())
                .trim_end()
                .to_string())
        })
    }

    pub fn fat_type(&self) -> Result<FatType> {
        self.with_fs(|fs| Ok(fs.fat_type()))
    }

    pub fn volume_id(&self) -> Result<u32> {
        self.with_fs(|fs| Ok(fs.volume_id()))
    }

    pub fn cluster_count(&self) -> Result<u32> {
        self.with_fs(|fs| {
            Ok(fs
                .stats()
                .context("reading FAT statistics")?
                .total_clusters())
        })
    }

    pub fn cluster_size(&self) -> Result<u32> {
        self.with_fs(|fs| Ok(fs.cluster_size()))
    }

    /// Free bytes on the ESP, counted from the FAT.
    pub fn free_bytes(&self) -> Result<u64> {
        self.with_fs(|fs| {
            let s = fs.stats().context("reading FAT statistics")?;
            Ok(u64::from(s.free_clusters()) * u64::from(s.cluster_size()))
        })
    }
}

/// Writes (or replaces) one file on the ESP of an existing image, creating
/// parent directories. The data goes to a temp name in the target
/// directory first and is renamed over the old file, so a failed write
/// leaves the old file whole. (FAT has no atomic replace: between the
/// remove and the rename the name is briefly absent.)
///
/// Timestamps come from SOURCE_DATE_EPOCH when set, else 1980-01-01, so
/// the result stays reproducible.
pub fn add_file_to_image(path: &Path, fat_path: &str, data: &[u8]) -> Result<()> {
    check_fat_path(fat_path)?;
    let fat_path = fat_path.trim_matches('/');
    let img = UsbImage::open(path)?;
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .with_context(|| format!("SOURCE_DATE_EPOCH={s:?} is not a number"))?,
        Err(_) => 0,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {} for writing", path.display()))?;
    {
        let slice = StreamSlice::new(&mut file, img.esp_offset, img.esp_offset + img.esp_size)
            .with_context(|| format!("seeking to the ESP of {}", path.display()))?;
        let mut disk = BufStream::new(slice);
        {
            let fs = FileSystem::new(&mut disk, fs_options(epoch))
                .with_context(|| format!("mounting the ESP of {}", path.display()))?;
            replace_file(&fs, fat_path, data, epoch)?;
            fs.unmount()
                .with_context(|| format!("unmounting the ESP of {}", path.display()))?;
        }
        disk.flush().context("flushing the ESP")?;
    }
    fix_dirs(&mut file, img.esp_offset, img.esp_size)?;
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

fn replace_file<T: fatfs::ReadWriteSeek>(
    fs: &FileSystem<T>,
    fat_path: &str,
    data: &[u8],
    epoch: u64,
) -> Result<()> {
    let root = fs.root_dir();
    for parent in fat_parents(fat_path) {
        if root.open_dir(parent).is_err() {
            root.create_dir(parent)
                .with_context(|| format!("creating directory {parent}"))?;
        }
    }
    let (dir_path, leaf) = fat_path.rsplit_once('/').unwrap_or(("", fat_path));
    let dir = if dir_path.is_empty() {
        root
    } else {
        root.open_dir(dir_path)
            .with_context(|| format!("opening directory {dir_path}"))?
    };
    let tmp = format!(".{leaf}.defib-tmp");
    if dir.open_file(&tmp).is_ok() {
        dir.remove(&tmp)
            .with_context(|| format!("removing a stale {tmp}"))?;
    }
    write_fat_file(&dir, &tmp, data, fixed_date_time(epoch))
        .with_context(|| format!("writing {fat_path} (as {tmp})"))?;
    if dir.open_file(leaf).is_ok() {
        dir.remove(leaf)
            .with_context(|| format!("removing the old {fat_path}"))?;
    }
    dir.rename(&tmp, &dir, leaf)
        .with_context(|| format!("renaming {tmp} to {fat_path}"))?;
    Ok(())
}

/// Puts back what an outside tool changed on the ESP of the image at
/// `path` (syslinux's mtools-based installer stamps the files it writes
/// with the current time): every file's created, modified and accessed
/// stamps become `epoch`, and the FAT32 backup boot sector (fatgen103
/// §3.3, BPB_BkBootSec) becomes a copy of the boot sector the tool
/// rewrote, so the image is reproducible and `fsck.fat` sees them agree.
pub fn restamp_esp(path: &Path, epoch: u64) -> Result<()> {
    let img = UsbImage::open(path)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {} for writing", path.display()))?;
    {
        let slice = StreamSlice::new(&mut file, img.esp_offset, img.esp_offset + img.esp_size)
            .with_context(|| format!("seeking to the ESP of {}", path.display()))?;
        let mut disk = BufStream::new(slice);
        let mut boot = [0u8; SECTOR as usize];
        disk.seek(SeekFrom::Start(0))
            .and_then(|_| disk.read_exact(&mut boot))
            .context("reading the ESP's boot sector")?;
        disk.seek(SeekFrom::Start(BACKUP_BOOT_SECTOR * SECTOR))
            .and_then(|_| disk.write_all(&boot))
            .context("writing the ESP's backup boot sector")?;
        disk.seek(SeekFrom::Start(0)).context("rewinding the ESP")?;
        {
            let fs = FileSystem::new(&mut disk, fs_options(epoch))
                .with_context(|| format!("mounting the ESP of {}", path.display()))?;
            stamp_tree(&fs.root_dir(), "", fixed_date_time(epoch))?;
            fs.unmount()
                .with_context(|| format!("unmounting the ESP of {}", path.display()))?;
        }
        disk.flush().context("flushing the ESP")?;
    }
    fix_dirs(&mut file, img.esp_offset, img.esp_size)?;
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))
}

/// Sets every file's stamps under `dir` (named `path`, for errors) to `when`.
fn stamp_tree<T: fatfs::ReadWriteSeek>(
    dir: &fatfs::Dir<T>,
    path: &str,
    when: DateTime,
) -> Result<()> {
    let entries: Vec<_> = dir
        .iter()
        .collect::<io::Result<_>>()
        .with_context(|| format!("listing /{path}"))?;
    for e in entries {
        let name = e.file_name();
        if name == "." || name == ".." {
            continue;
        }
        let child = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}/{name}")
        };
        if e.is_dir() {
            stamp_tree(&e.to_dir(), &child, when)?;
        } else {
            let mut f = e.to_file();
            #[allow(deprecated)]
            {
                f.set_created(when);
                f.set_modified(when);
                f.set_accessed(when.date);
            }
            f.flush().with_context(|| format!("stamping /{child}"))?;
        }
    }
    Ok(())
}

/// A bare FAT volume (no partition table) holding `spec.files` and
/// `spec.dirs`, with `spec.free_space` left over: the EFI boot image of
/// the hybrid ISO (El Torito, UEFI 2.10 §13.3.2.1). Unlike the USB ESP the
/// FAT type follows the size, so a few MiB come out FAT12 or FAT16, which
/// is what such images usually are and what every UEFI FAT driver reads.
/// `spec.seed` gives the volume id, `spec.mtime` every stamp.
pub fn fat_image(spec: &EspSpec) -> Result<Vec<u8>> {
    check_label(&spec.label)?;
    for path in spec.files.keys().chain(&spec.dirs) {
        check_fat_path(path)?;
    }
    // Size for the worst cluster fatfs may pick for a small volume (4 KiB),
    // plus the FATs, root directory and a margin, in whole 64 KiB.
    let content = content_bytes(spec, 4096)?;
    let size = round_up(
        content + spec.free_space + content / 16 + 256 * 1024,
        64 * 1024,
    );
    let sectors = u32::try_from(size / SECTOR)
        .map_err(|_| anyhow!("FAT image of {size} bytes is too big"))?;
    let mut buf = io::Cursor::new(vec![0u8; size as usize]);
    let mut label = [b' '; 11];
    label[..spec.label.len()].copy_from_slice(spec.label.as_bytes());
    fatfs::format_volume(
        &mut buf,
        FormatVolumeOptions::new()
            .bytes_per_sector(SECTOR as u16)
            .total_sectors(sectors)
            .volume_id(Ids::from_seed(&spec.seed).volume_id)
            .volume_label(label),
    )
    .context("formatting the FAT image")?;
    buf.set_position(0);
    {
        let fs = FileSystem::new(&mut buf, fs_options(spec.mtime))
            .context("mounting the new FAT image")?;
        write_tree(&fs, spec)?;
        fs.unmount().context("unmounting the FAT image")?;
    }
    // No `dotfix` pass: it handles FAT32 only. The "." and ".." entries
    // fatfs writes are odd but harmless to the UEFI FAT driver reading
    // \EFI\BOOT by name.
    Ok(buf.into_inner())
}

// `#[path]` so the submodules resolve the same whether this file is
// reached as `image.rs` or included from elsewhere.
#[path = "image/dotfix.rs"]
mod dotfix;

#[cfg(test)]
#[path = "image/tests.rs"]
mod tests;
