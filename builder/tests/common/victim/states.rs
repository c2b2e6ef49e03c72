//! Volume states a victim can be left in by Windows, applied to a made
//! victim: the NTFS dirty flag (an unclean shutdown, chkdsk pending) and a
//! live hibernation file. And where a file's bytes lie on the disk, for
//! tests that make the disk fail there.

use super::*;

/// Sets `VOLUME_IS_DIRTY` (0x0001) in `$Volume`'s `$VOLUME_INFORMATION`
/// flags, as Windows does when it mounts the volume and as it stays after a
/// crash: in the `$MFT` record and in its `$MFTMirr` copy (record 3 is
/// among the four the mirror holds).
pub fn set_dirty(v: &Victim) -> Result<()> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&v.disk)
        .with_context(|| format!("opening {}", v.disk.display()))?;
    let mut boot = [0u8; 512];
    f.seek(SeekFrom::Start(v.ntfs_offset))?;
    f.read_exact(&mut boot)?;
    if &boot[3..11] != b"NTFS    " {
        bail!(
            "{}: no NTFS boot sector at {}",
            v.disk.display(),
            v.ntfs_offset
        );
    }
    // BIOS parameter block: bytes per sector @0x0B, sectors per cluster
    // @0x0D, $MFT cluster @0x30, $MFTMirr cluster @0x38, clusters per file
    // record @0x40 (negative n: 2^-n bytes).
    let bps = u64::from(u16::from_le_bytes([boot[0x0B], boot[0x0C]]));
    let cluster = bps * u64::from(boot[0x0D]);
    let record = match boot[0x40] as i8 {
        n if n < 0 => 1u64 << (-n as u32),
        n => n as u64 * cluster,
    };
    let lcn = |at: usize| u64::from_le_bytes(boot[at..at + 8].try_into().unwrap());
    for table in [lcn(0x30), lcn(0x38)] {
        let rec_at = v.ntfs_offset + table * cluster + 3 * record;
        let mut rec = vec![0u8; record as usize];
        f.seek(SeekFrom::Start(rec_at))?;
        f.read_exact(&mut rec)?;
        if &rec[0..4] != b"FILE" {
            bail!("$Volume's file record at {rec_at} has no FILE signature");
        }
        let le16 = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as usize;
        let le32 =
            |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        // Attributes from the offset @0x14; type 0x70 is
        // $VOLUME_INFORMATION, resident, value offset @0x14 in the
        // attribute, flags at value + 0x0A.
        let mut at = le16(&rec, 0x14);
        let flags = loop {
            if at + 8 > rec.len() || le32(&rec, at) == 0xFFFF_FFFF {
                bail!("$Volume has no $VOLUME_INFORMATION");
            }
            if le32(&rec, at) == 0x70 {
                break at + le16(&rec, at + 0x14) + 0x0A;
            }
            let len = le32(&rec, at + 4);
            if len == 0 {
                bail!("$Volume's attribute list is corrupt");
            }
            at += len;
        };
        // The last two bytes of each sector hold the update sequence
        // number on disk; the flags must not be there.
        if flags % bps as usize >= bps as usize - 2 {
            bail!("$VOLUME_INFORMATION flags sit under an update sequence fixup");
        }
        f.seek(SeekFrom::Start(rec_at + flags as u64))?;
        f.write_all(&(le16(&rec, flags) as u16 | 0x0001).to_le_bytes())?;
    }
    f.sync_all()?;
    Ok(())
}

/// The first page of a `hiberfil.sys` that Windows XP will resume from: the
/// start of its `PO_MEMORY_IMAGE` header (signature "hibr", version 0,
/// checksum, the header's length 0xA8, page size 4096); a real file goes on
/// with the saved RAM, here a few zero pages.
pub fn xp_hiberfil() -> Vec<u8> {
    let mut b = vec![0u8; 64 * 1024];
    b[0..4].copy_from_slice(b"hibr");
    b[12..16].copy_from_slice(&0xA8u32.to_le_bytes());
    b[20..24].copy_from_slice(&4096u32.to_le_bytes());
    b
}

/// Writes `data` at `windows_path` on the victim's volume (through a
/// read-write ntfs-3g mount of a copy of the partition, copied back
/// whole).
pub fn add_file(v: &Victim, windows_path: &str, data: &[u8]) -> Result<()> {
    let parent = v.disk.parent().unwrap_or(Path::new("."));
    let work = tempfile::Builder::new()
        .prefix(".victim-edit-")
        .tempdir_in(parent)
        .context("creating a scratch folder beside the disk")?;
    let vol = work.path().join("volume.img");
    sparse_copy(&v.disk, v.ntfs_offset, v.ntfs_len, &vol, 0, true)
        .context("copying the NTFS partition out of the disk")?;
    let mnt = work.path().join("mnt");
    fs::create_dir(&mnt)?;
    let m = Mount::new(&vol, &mnt, false)?;
    let path = mnt.join(windows_path.replace('\\', "/"));
    let written = path
        .parent()
        .map(fs::create_dir_all)
        .unwrap_or(Ok(()))
        .and_then(|_| fs::write(&path, data))
        .with_context(|| format!("writing {windows_path}"));
    m.unmount()?;
    written?;
    // Copied back whole: a block that became zero must become zero on the
    // disk too.
    let mut src = File::open(&vol)?;
    let mut dst = OpenOptions::new().write(true).open(&v.disk)?;
    dst.seek(SeekFrom::Start(v.ntfs_offset))?;
    let n = std::io::copy(&mut (&mut src).take(v.ntfs_len), &mut dst)?;
    if n != v.ntfs_len {
        bail!("copied {n} of {} bytes back into the disk", v.ntfs_len);
    }
    dst.sync_all()?;
    Ok(())
}

/// The disk sectors holding a file's bytes, found by content: the file
/// must be non-resident and contiguous (as on a freshly made victim), and
/// its first 512 bytes unique on the disk.
pub fn sectors_of(v: &Victim, data: &[u8]) -> Result<std::ops::Range<u64>> {
    if data.len() < 1024 {
        bail!(
            "a file of {} bytes may be resident in its MFT record",
            data.len()
        );
    }
    let disk = fs::read(&v.disk)?;
    let mut hits = (0..disk.len().saturating_sub(data.len()))
        .step_by(SECTOR as usize)
        .filter(|&at| disk[at..at + 512] == data[..512]);
    let at = hits
        .next()
        .ok_or_else(|| anyhow!("the file's bytes are not on {}", v.disk.display()))?;
    if hits.next().is_some() {
        bail!("the file's first sector is on the disk twice");
    }
    if disk[at..at + data.len()] != *data {
        bail!("the file is not contiguous on the disk");
    }
    let first = at as u64 / SECTOR;
    Ok(first..first + (data.len() as u64).div_ceil(SECTOR))
}
