//! Changing an existing image in place: one file added or replaced, and the
//! timestamps an outside tool (syslinux's installer) stamped put back.

use super::*;

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
        let slice = StreamSlice::new(
            &mut file,
            img.esp_offset(),
            img.esp_offset() + img.esp_size(),
        )
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
    fix_dirs(&mut file, img.esp_offset(), img.esp_size())?;
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

pub(super) fn replace_file<T: fatfs::ReadWriteSeek>(
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
        let slice = StreamSlice::new(
            &mut file,
            img.esp_offset(),
            img.esp_offset() + img.esp_size(),
        )
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
    fix_dirs(&mut file, img.esp_offset(), img.esp_size())?;
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))
}

/// Sets every file's stamps under `dir` (named `path`, for errors) to `when`.
pub(super) fn stamp_tree<T: fatfs::ReadWriteSeek>(
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
