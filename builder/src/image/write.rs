//! Writing a new image: the GPT, the FAT32 ESP sized for its content, and
//! the bare FAT volume the ISO carries for UEFI.

use super::*;

/// Builds the image at `out`. Writes to `.<name>.tmp-<pid>` beside it,
/// fsyncs, and renames over `out` only when everything succeeded.
pub fn write_usb_image(spec: &EspSpec, out: &Path) -> Result<ImageSummary> {
    check_label(&spec.label)?;
    for path in spec
        .files
        .keys()
        .chain(spec.from_disk.keys())
        .chain(&spec.dirs)
    {
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
pub(super) struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        // Best effort on an error path: the original error matters more.
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The seed-derived identities. Each is SHA-256(seed || purpose), so they
/// are independent of each other and stable for a given seed.
pub(super) struct Ids {
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

pub(super) fn write_gpt(
    file: &mut File,
    spec: &EspSpec,
    esp_size: u64,
    total: u64,
    ids: &Ids,
) -> Result<()> {
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

pub(super) fn write_fat(
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
pub(super) fn fix_dirs(file: &mut File, offset: u64, size: u64) -> Result<()> {
    let mut slice =
        StreamSlice::new(&mut *file, offset, offset + size).context("seeking to the ESP")?;
    dotfix::fix_dot_entries(&mut slice).context("fixing \".\" and \"..\" directory entries")
}

/// Creates `spec.dirs` and every parent, then writes `spec.files`.
pub(super) fn write_tree<T: fatfs::ReadWriteSeek>(
    fs: &FileSystem<T>,
    spec: &EspSpec,
) -> Result<()> {
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
        for (path, src) in &spec.from_disk {
            let path = path.trim_start_matches('/');
            if spec.files.contains_key(path) {
                bail!("{path} is given twice (as bytes and as {})", src.display());
            }
            let mut input =
                File::open(src).with_context(|| format!("opening {}", src.display()))?;
            write_fat_stream(&root, path, &mut input, when)
                .with_context(|| format!("writing {path} from {}", src.display()))?;
        }
    }
    Ok(())
}

pub(super) fn write_fat_file<T: fatfs::ReadWriteSeek>(
    dir: &fatfs::Dir<T>,
    path: &str,
    data: &[u8],
    when: DateTime,
) -> Result<()> {
    write_fat_stream(dir, path, &mut &data[..], when)
}

/// Like [`write_fat_file`], copying from a reader.
pub(super) fn write_fat_stream<T: fatfs::ReadWriteSeek>(
    dir: &fatfs::Dir<T>,
    path: &str,
    data: &mut dyn Read,
    when: DateTime,
) -> Result<()> {
    let mut f = dir.create_file(path).context("creating the file")?;
    f.truncate().context("truncating the file")?;
    io::copy(data, &mut f).context("writing data")?;
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
pub(super) fn plan_esp(spec: &EspSpec) -> Result<(u32, u64)> {
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
pub(super) fn fat_bytes(esp: u64, cluster: u64) -> u64 {
    FAT_COPIES * round_up((esp / cluster + 2) * FAT32_ENTRY, SECTOR)
}

pub(super) fn data_clusters(esp: u64, cluster: u64) -> u64 {
    esp.saturating_sub(FAT_RESERVED_SECTORS * SECTOR + fat_bytes(esp, cluster)) / cluster
}

/// Clusters the files and directories take, in bytes.
pub(super) fn content_bytes(spec: &EspSpec, cluster: u64) -> Result<u64> {
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
    for (path, src) in &spec.from_disk {
        add(path.trim_start_matches('/'), &mut dirs);
        let len = std::fs::metadata(src)
            .with_context(|| format!("reading the size of {}", src.display()))?
            .len();
        total = total
            .checked_add(round_up(len, cluster))
            .context("ESP size overflows")?;
    }
    for bytes in dirs.values() {
        total += round_up(*bytes, cluster);
    }
    Ok(total)
}

/// Every directory the ESP holds: the parents of every file, and the extra
/// dirs with their parents. Sorted, so parents come before their children.
pub(super) fn spec_dirs(spec: &EspSpec) -> BTreeSet<&str> {
    let mut dirs = BTreeSet::new();
    for path in spec.files.keys().chain(spec.from_disk.keys()) {
        dirs.extend(fat_parents(path));
    }
    for d in &spec.dirs {
        dirs.extend(fat_parents(d));
        dirs.insert(d.trim_matches('/'));
    }
    dirs
}

/// A bare FAT volume (no partition table) holding `spec.files` and
/// `spec.dirs`, with `spec.free_space` left over: the EFI boot image of
/// the hybrid ISO (El Torito, UEFI 2.10 §13.3.2.1). Unlike the USB ESP the
/// FAT type follows the size, so a few MiB come out FAT12 or FAT16, which
/// is what such images usually are and what every UEFI FAT driver reads.
/// `spec.seed` gives the volume id, `spec.mtime` every stamp.
pub fn fat_image(spec: &EspSpec) -> Result<Vec<u8>> {
    check_label(&spec.label)?;
    for path in spec
        .files
        .keys()
        .chain(spec.from_disk.keys())
        .chain(&spec.dirs)
    {
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
