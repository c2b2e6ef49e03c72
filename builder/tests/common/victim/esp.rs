//! The EFI system partition of a GPT victim: formatted FAT with the
//! `fatfs` crate (the one the builder writes its own ESP with), holding a
//! BCD store merged by hivexregedit into the empty hive Windows wrote
//! (`yarp-EmptyHive`); and host-side readers of it after a run.

#![allow(unused_imports)]

use super::*;
use fscommon::BufStream;
use std::io::Cursor;

/// Where Windows keeps the BCD store on the ESP.
pub const ESP_BCD: &str = r"EFI\Microsoft\Boot\BCD";
/// The Windows Boot Manager object.
pub const BCD_BOOTMGR: &str = "{9dea862c-5cdd-4e70-acc1-f32b344d4795}";
/// The OS loader object the fixture's boot manager names as default.
pub const BCD_LOADER: &str = "{3b0e6a52-94c1-4f7d-a2e8-5c1d7f903b64}";

/// A BCD store as Windows 10 lays out the parts defib reads: the boot
/// manager's `default` (23000003) names an OS loader whose `path`
/// (12000002) is `\Windows\system32\winload.efi`; `safeboot` (25000080,
/// an 8-byte integer) when given.
pub fn bcd_store(safeboot: Option<u8>) -> Result<Vec<u8>> {
    let bm = |el: &str| format!(r"Objects\{BCD_BOOTMGR}\Elements\{el}");
    let os = |el: &str| format!(r"Objects\{BCD_LOADER}\Elements\{el}");
    let mut spec: HiveSpec = vec![
        key(r"Description", &[("KeyName", sz("BCD00000000"))]),
        key(&bm("23000003"), &[("Element", sz(BCD_LOADER))]),
        key(&bm("12000004"), &[("Element", sz("Windows Boot Manager"))]),
        key(
            &os("12000002"),
            &[("Element", sz(r"\Windows\system32\winload.efi"))],
        ),
        key(&os("12000004"), &[("Element", sz("Windows 10"))]),
        key(
            &os("250000e0"),
            &[("Element", RegVal::Bin(vec![1, 0, 0, 0, 0, 0, 0, 0]))],
        ),
        key(&os("16000009"), &[("Element", RegVal::Bin(vec![1]))]),
    ];
    if let Some(v) = safeboot {
        spec.push(key(
            &os("25000080"),
            &[("Element", RegVal::Bin(vec![v, 0, 0, 0, 0, 0, 0, 0]))],
        ));
    }
    spec.push(key(&os("26000010"), &[("Element", RegVal::Bin(vec![1]))]));
    hive("BCD", &spec)
}

/// Byte offset and length of the EFI system partition, from the disk's GPT.
pub fn esp_range(disk: &Path) -> Result<(u64, u64)> {
    let mut f = File::open(disk).with_context(|| format!("opening {}", disk.display()))?;
    let mut hdr = [0u8; 92];
    f.seek(SeekFrom::Start(SECTOR))?;
    f.read_exact(&mut hdr)?;
    if &hdr[..8] != b"EFI PART" {
        bail!("{} has no GPT", disk.display());
    }
    let lba = u64::from_le_bytes(hdr[0x48..0x50].try_into()?);
    let count = u32::from_le_bytes(hdr[0x50..0x54].try_into()?) as usize;
    let size = u32::from_le_bytes(hdr[0x54..0x58].try_into()?) as usize;
    let mut table = vec![0u8; count * size];
    f.seek(SeekFrom::Start(lba * SECTOR))?;
    f.read_exact(&mut table)?;
    let esp = guid_bytes(GUID_ESP)?;
    for e in table.chunks_exact(size) {
        if e[..16] == esp {
            let first = u64::from_le_bytes(e[0x20..0x28].try_into()?);
            let last = u64::from_le_bytes(e[0x28..0x30].try_into()?);
            return Ok((first * SECTOR, (last + 1 - first) * SECTOR));
        }
    }
    bail!("{} has no EFI system partition", disk.display())
}

fn esp_image(v: &Victim) -> Result<Vec<u8>> {
    let (off, len) = esp_range(&v.disk)?;
    let mut f = File::open(&v.disk)?;
    f.seek(SeekFrom::Start(off))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

/// [`make_win10_crowdstrike`] whose ESP is formatted FAT and holds a BCD
/// store with `safeboot = network` on the default entry: a PC someone put
/// into Safe Mode to delete the channel file. Returns the victim and the
/// BCD store's bytes as written.
pub fn make_win10_crowdstrike_safe_mode(dir: &Path) -> Result<(Victim, Vec<u8>)> {
    let v = make_win10_crowdstrike(dir)?;
    let store = bcd_store(Some(1))?;
    let (off, len) = esp_range(&v.disk)?;
    let mut img = Cursor::new(vec![0u8; len as usize]);
    fatfs::format_volume(
        &mut img,
        fatfs::FormatVolumeOptions::new().volume_label(*b"SYSTEM     "),
    )
    .context("formatting the ESP")?;
    {
        let fs = fatfs::FileSystem::new(&mut img, fatfs::FsOptions::new())
            .context("opening the new ESP")?;
        let root = fs.root_dir();
        let mut d = root.create_dir("EFI")?;
        for part in ["Microsoft", "Boot"] {
            d = d.create_dir(part)?;
        }
        let mut bcd = d.create_file("BCD")?;
        bcd.truncate()?;
        bcd.write_all(&store)?;
        bcd.flush()?;
        let mut boot = root.create_dir("EFI/Boot")?.create_file("bootx64.efi")?;
        boot.write_all(b"not a real boot manager")?;
        boot.flush()?;
    }
    let mut f = OpenOptions::new().write(true).open(&v.disk)?;
    f.seek(SeekFrom::Start(off))?;
    f.write_all(img.get_ref())?;
    f.sync_all()?;
    Ok((v, store))
}

/// A file on the victim's ESP (`EFI\Microsoft\Boot\BCD`), read from the
/// disk image with fatfs; `None` when absent.
pub fn esp_read(v: &Victim, path: &str) -> Result<Option<Vec<u8>>> {
    let mut img = Cursor::new(esp_image(v)?);
    let fs = fatfs::FileSystem::new(&mut img, fatfs::FsOptions::new())
        .context("the victim's ESP is not a FAT file system")?;
    let p = path.replace('\\', "/");
    let mut f = match fs.root_dir().open_file(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {path} on the ESP")),
    };
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    Ok(Some(out))
}

/// The names in a folder of the victim's ESP.
pub fn esp_list(v: &Victim, path: &str) -> Result<Vec<String>> {
    let mut img = Cursor::new(esp_image(v)?);
    let fs = fatfs::FileSystem::new(&mut img, fatfs::FsOptions::new())?;
    let d = fs.root_dir().open_dir(&path.replace('\\', "/"))?;
    Ok(d.iter()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n != "." && n != "..")
        .collect())
}

/// Copies the victim's ESP into `to` as plain files (what a mounted ESP
/// looks like to `rescue undo --esp`).
pub fn esp_extract(v: &Victim, to: &Path) -> Result<()> {
    fn walk<T: fatfs::ReadWriteSeek>(d: fatfs::Dir<T>, to: &Path) -> Result<()> {
        fs::create_dir_all(to)?;
        for e in d.iter() {
            let e = e?;
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            if e.is_dir() {
                walk(e.to_dir(), &to.join(&name))?;
            } else {
                let mut data = Vec::new();
                e.to_file().read_to_end(&mut data)?;
                fs::write(to.join(&name), data)?;
            }
        }
        Ok(())
    }
    let mut img = Cursor::new(esp_image(v)?);
    let fs = fatfs::FileSystem::new(&mut img, fatfs::FsOptions::new())?;
    walk(fs.root_dir(), to)
}

/// Runs `f` on a read-write ntfs-3g mount of a copy of the victim's NTFS
/// volume (the disk itself is not touched): for host-mode `rescue undo`.
pub fn with_volume_copy_rw<T>(v: &Victim, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let parent = v.disk.parent().unwrap_or(Path::new("."));
    let work = tempfile::Builder::new()
        .prefix(".victim-rw-")
        .tempdir_in(parent)
        .context("creating a scratch folder beside the disk")?;
    let vol = work.path().join("volume.img");
    sparse_copy(&v.disk, v.ntfs_offset, v.ntfs_len, &vol, 0, true)?;
    let mnt = work.path().join("mnt");
    fs::create_dir(&mnt)?;
    let m = Mount::new(&vol, &mnt, false)?;
    let out = f(&mnt);
    m.unmount()?;
    out
}
