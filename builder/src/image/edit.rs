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
    replace_file_from(fs, fat_path, &mut &data[..], epoch)
}

/// [`replace_file`] copying from a reader.
pub(super) fn replace_file_from<T: fatfs::ReadWriteSeek>(
    fs: &FileSystem<T>,
    fat_path: &str,
    data: &mut dyn Read,
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
    if let Err(e) = write_fat_stream(&dir, &tmp, data, fixed_date_time(epoch)) {
        // A full volume: the temp name goes, the old file stays.
        let _ = dir.remove(&tmp);
        return Err(e.context(format!("writing {fat_path} (as {tmp})")));
    }
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

/// The ESP of an image or stick, mounted read-write for a series of edits
/// (`defib store sync`): see [`with_esp`].
pub trait EspOps {
    /// Up to `cap` bytes of a file; `Ok(None)` if there is no such file.
    fn read_capped(&self, fat_path: &str, cap: u64) -> Result<Option<Vec<u8>>>;
    /// Writes a file under a temp name in its folder and renames it over
    /// the old one (creating parent folders): a failure leaves the old file.
    fn replace(&self, fat_path: &str, data: &mut dyn Read) -> Result<()>;
    /// Free bytes on the volume.
    fn free_bytes(&self) -> Result<u64>;
    fn cluster_size(&self) -> u64;
}

struct EspRw<'a, T: fatfs::ReadWriteSeek> {
    fs: &'a FileSystem<T>,
    epoch: u64,
}

impl<T: fatfs::ReadWriteSeek> EspOps for EspRw<'_, T> {
    fn read_capped(&self, fat_path: &str, cap: u64) -> Result<Option<Vec<u8>>> {
        let f = match self.fs.root_dir().open_file(fat_path.trim_matches('/')) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {fat_path}")),
        };
        let mut data = Vec::new();
        f.take(cap)
            .read_to_end(&mut data)
            .with_context(|| format!("reading {fat_path}"))?;
        Ok(Some(data))
    }

    fn replace(&self, fat_path: &str, data: &mut dyn Read) -> Result<()> {
        check_fat_path(fat_path)?;
        replace_file_from(self.fs, fat_path.trim_matches('/'), data, self.epoch)
    }

    fn free_bytes(&self) -> Result<u64> {
        let s = self.fs.stats().context("reading FAT statistics")?;
        Ok(u64::from(s.free_clusters()) * u64::from(s.cluster_size()))
    }

    fn cluster_size(&self) -> u64 {
        u64::from(self.fs.cluster_size())
    }
}

/// Mounts the ESP of the image or stick at `path` read-write, runs `f`,
/// then unmounts and syncs whatever `f` returned: a half-done series of
/// edits still leaves a consistent FAT. New stamps are `epoch`.
pub fn with_esp<R>(path: &Path, epoch: u64, f: impl FnOnce(&dyn EspOps) -> Result<R>) -> Result<R> {
    let img = UsbImage::open(path)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {} for writing", path.display()))?;
    let result;
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
            result = f(&EspRw { fs: &fs, epoch });
            fs.unmount()
                .with_context(|| format!("unmounting the ESP of {}", path.display()))?;
        }
        disk.flush().context("flushing the ESP")?;
    }
    fix_dirs(&mut file, img.esp_offset(), img.esp_size())?;
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    result
}
