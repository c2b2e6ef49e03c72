//! Reading an image or a used stick, read-only: its GPT and the files and
//! directories of its ESP (`defib inspect`, `defib reports`, the tests).

use super::*;

/// Refuses writes, so a stick opened for inspection can't be changed even
/// if fatfs decided to update something on drop.
#[derive(Debug)]
pub(super) struct ReadOnly<T>(T);

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

/// Records where reads start while armed, so [`UsbImage::read_file`] can
/// tell which data clusters a file's chain really visited: fatfs bounds a
/// read by the directory entry's size and follows the FAT blindly, so a
/// looping chain hands back the same cluster again and again at the
/// right length.
#[derive(Debug)]
pub(super) struct ReadLog<T> {
    inner: T,
    pos: u64,
    log: std::rc::Rc<std::cell::RefCell<Option<Vec<u64>>>>,
}

impl<T: Read> Read for ReadLog<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(l) = self.log.borrow_mut().as_mut() {
            l.push(self.pos);
        }
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}
impl<T: Seek> Seek for ReadLog<T> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.pos = self.inner.seek(pos)?;
        Ok(self.pos)
    }
}
impl<T: Write> Write for ReadLog<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Where a FAT volume's data clusters start and how big they are, from its
/// boot sector (Microsoft's FAT spec: bytes per sector @11, sectors per
/// cluster @13, reserved sectors @14, FAT count @16, root entries @17,
/// sectors per FAT @22, or @36 when that is 0).
fn data_area(boot: &[u8; 512]) -> Option<(u64, u64)> {
    let le16 = |o: usize| u64::from(u16::from_le_bytes([boot[o], boot[o + 1]]));
    let bps = le16(11);
    let cluster = bps * u64::from(boot[13]);
    let fat = match le16(22) {
        0 => u64::from(u32::from_le_bytes(boot[36..40].try_into().ok()?)),
        n => n,
    };
    let root = (le16(17) * 32).div_ceil(bps.max(1)) * bps;
    let start = (le16(14) + u64::from(boot[16]) * fat) * bps + root;
    (cluster > 0).then_some((start, cluster))
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

type RoFs = FileSystem<BufStream<ReadLog<StreamSlice<ReadOnly<File>>>>>;

/// A mounted ESP, the read log under it, and its data area
/// (start, cluster size) as the boot sector gives it.
struct Esp {
    fs: RoFs,
    log: std::rc::Rc<std::cell::RefCell<Option<Vec<u64>>>>,
    data: Option<(u64, u64)>,
}

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
        self.with_esp(|esp| f(&esp.fs))
    }

    fn with_esp<R>(&self, f: impl FnOnce(&Esp) -> Result<R>) -> Result<R> {
        let file =
            File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        let mut slice = StreamSlice::new(
            ReadOnly(file),
            self.esp_offset,
            self.esp_offset + self.esp_size,
        )
        .with_context(|| format!("seeking to the ESP of {}", self.path.display()))?;
        let mut boot = [0u8; 512];
        slice
            .read_exact(&mut boot)
            .and_then(|_| slice.seek(SeekFrom::Start(0)))
            .with_context(|| format!("reading the ESP's boot sector on {}", self.path.display()))?;
        let log = std::rc::Rc::new(std::cell::RefCell::new(None));
        let logged = ReadLog {
            inner: slice,
            pos: 0,
            log: log.clone(),
        };
        let fs = FileSystem::new(BufStream::new(logged), fs_options(0)).with_context(|| {
            format!("{}: the ESP is not a FAT file system", self.path.display())
        })?;
        // Dropping `fs` may try to write back FSInfo counts it computed; the
        // ReadOnly wrapper refuses and fatfs only logs that, which is what
        // we want for inspection.
        f(&Esp {
            fs,
            log,
            data: data_area(&boot),
        })
    }

    /// The whole content of one file, e.g. `defib/manifest.json`. A file
    /// whose FAT cluster chain ends before its directory entry's size, or
    /// runs in a loop, is an error naming it: the stick's FAT is damaged,
    /// and its bytes are not the file's.
    pub fn read_file(&self, fat_path: &str) -> Result<Vec<u8>> {
        self.with_esp(|esp| {
            let p = fat_path.trim_matches('/');
            let (parent, name) = p.rsplit_once('/').unwrap_or(("", p));
            let root = esp.fs.root_dir();
            let dir = if parent.is_empty() {
                root
            } else {
                root.open_dir(parent)
                    .with_context(|| format!("opening {fat_path} on the ESP"))?
            };
            let mut entry = None;
            for e in dir.iter() {
                let e = e.with_context(|| format!("opening {fat_path} on the ESP"))?;
                if e.file_name().eq_ignore_ascii_case(name)
                    || e.short_file_name().eq_ignore_ascii_case(name)
                {
                    entry = Some(e);
                    break;
                }
            }
            let entry = entry
                .filter(|e| e.is_file())
                .ok_or_else(|| anyhow!("opening {fat_path} on the ESP: no such file"))?;
            let size = entry.len();
            let mut f = entry.to_file();
            let mut data = Vec::new();
            *esp.log.borrow_mut() = Some(Vec::new());
            let read = f.read_to_end(&mut data);
            let starts = esp.log.borrow_mut().take().unwrap_or_default();
            read.with_context(|| format!("reading {fat_path} on the ESP"))?;
            if data.len() as u64 != size {
                bail!(
                    "{fat_path} on the ESP: its FAT cluster chain ends after {} of its {size} bytes; the stick's file system is damaged (fsck.vfat -n shows where)",
                    data.len()
                );
            }
            if let Some((start, cluster)) = esp.data {
                let visited: BTreeSet<u64> = starts
                    .iter()
                    .filter(|&&o| o >= start)
                    .map(|o| (o - start) / cluster)
                    .collect();
                let needed = size.div_ceil(cluster);
                if (visited.len() as u64) < needed {
                    bail!(
                        "{fat_path} on the ESP: its FAT cluster chain loops ({} distinct clusters for {size} bytes that need {needed}); the stick's file system is damaged (fsck.vfat -n shows where)",
                        visited.len()
                    );
                }
            }
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
