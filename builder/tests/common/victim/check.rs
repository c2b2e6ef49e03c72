//! Host-side checks: read a victim's volume after the rescue ran on it,
//! through a read-only ntfs-3g mount of a copy of its partition.

#![allow(unused_imports)]

use super::*;

/// The file at `windows_path` (case-insensitive), or None if absent.
pub fn read_file(v: &Victim, windows_path: &str) -> Result<Option<Vec<u8>>> {
    with_volume(v, |root| match resolve(root, windows_path)? {
        Some(p) if p.is_file() => Ok(Some(
            fs::read(&p).with_context(|| format!("reading {windows_path}"))?,
        )),
        _ => Ok(None),
    })
}

/// The names (as cased on the volume, sorted) in the directory at
/// `windows_path` (case-insensitive; "" is the root). Error if absent.
pub fn list_dir(v: &Victim, windows_path: &str) -> Result<Vec<String>> {
    with_volume(v, |root| {
        let p = resolve(root, windows_path)?
            .filter(|p| p.is_dir())
            .ok_or_else(|| anyhow!("no directory {windows_path:?} on {}", v.disk.display()))?;
        let mut names = Vec::new();
        for e in fs::read_dir(&p).with_context(|| format!("listing {windows_path}"))? {
            names.push(e?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    })
}

/// The sha256 (lowercase hex) of the file at `windows_path`, None if absent.
pub fn sha256_of(v: &Victim, windows_path: &str) -> Result<Option<String>> {
    Ok(read_file(v, windows_path)?.map(|d| sha256_hex(&d)))
}

/// The last-write time (unix seconds) of `windows_path`, None if absent.
pub fn mtime_of(v: &Victim, windows_path: &str) -> Result<Option<i64>> {
    with_volume(v, |root| {
        Ok(match resolve(root, windows_path)? {
            Some(p) => Some(fs::metadata(&p)?.mtime()),
            None => None,
        })
    })
}

/// The path of `windows_path` as cased on the volume, None if absent.
pub fn real_path(v: &Victim, windows_path: &str) -> Result<Option<String>> {
    with_volume(v, |root| {
        Ok(resolve(root, windows_path)?.map(|p| {
            let rel = p.strip_prefix(root).unwrap_or(&p);
            rel.components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("\\")
        }))
    })
}

/// Runs `f` on a read-only mount of the victim's NTFS volume (one mount for
/// many reads). The partition is copied out first: the disk is not opened
/// for writing.
pub fn with_volume<T>(v: &Victim, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let parent = v.disk.parent().unwrap_or(Path::new("."));
    let work = tempfile::Builder::new()
        .prefix(".victim-read-")
        .tempdir_in(parent)
        .context("creating a scratch folder beside the disk")?;
    let vol = work.path().join("volume.img");
    sparse_copy(&v.disk, v.ntfs_offset, v.ntfs_len, &vol, 0, true)
        .context("copying the NTFS partition out of the disk")?;
    let vol = match &v.bitlocker {
        None => vol,
        Some(rp) => decrypt_volume(&vol, rp, &work.path().join("plain.img"))?,
    };
    let mnt = work.path().join("mnt");
    fs::create_dir(&mnt)?;
    let m = Mount::new(&vol, &mnt, true)?;
    let out = f(&mnt);
    m.unmount()?;
    out
}

/// sha256 of the whole disk file (byte-identical checks). Uses coreutils'
/// `sha256sum`: the sha2 crate in a test (debug) build hashes ~30 MB/s, ten
/// times slower.
pub fn disk_sha256(v: &Victim) -> Result<String> {
    let out = run(Command::new(tool("sha256sum", "coreutils")?)
        .arg("--binary")
        .arg(&v.disk))
    .with_context(|| format!("hashing {}", v.disk.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("sha256sum printed {text:?}");
    }
    Ok(hex)
}

pub use defib_rescue::hash::sha256_hex;

/// The path below `root` naming `windows_path`, matching each component
/// without case (an exact match wins). None if any component is missing.
pub(super) fn resolve(root: &Path, windows_path: &str) -> Result<Option<PathBuf>> {
    let mut cur = root.to_path_buf();
    for part in windows_path.split(['\\', '/']).filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            bail!("{windows_path:?}: relative components are not allowed");
        }
        if !cur.is_dir() {
            return Ok(None);
        }
        if cur.join(part).symlink_metadata().is_ok() {
            cur.push(part);
            continue;
        }
        let want = part.to_lowercase();
        let mut found = None;
        for e in fs::read_dir(&cur).with_context(|| format!("listing {}", cur.display()))? {
            let name = e?.file_name();
            if name.to_string_lossy().to_lowercase() == want {
                if found.is_some() {
                    bail!("{windows_path:?} is ambiguous: two names differ only in case");
                }
                found = Some(name);
            }
        }
        match found {
            Some(n) => cur.push(n),
            None => return Ok(None),
        }
    }
    Ok(Some(cur))
}

/// A BitLocker volume decrypted in software (our reader, checked against
/// the corpus' known plain hashes) into a plain image, for ntfs-3g.
fn decrypt_volume(vol: &Path, rp: &str, out: &Path) -> Result<PathBuf> {
    use defib_rescue::bitlocker::{dm, read_metadata, soft, unlock, Credential, RecoveryPassword};
    let mut f = File::open(vol)?;
    let meta = read_metadata(&mut f, 0)?;
    let key = unlock(
        &meta,
        &Credential::RecoveryPassword(RecoveryPassword::parse(rp)?),
    )?
    .key;
    let len = fs::metadata(vol)?.len();
    let plan = dm::plan(&meta, len)?;
    let mut reader = soft::PlainReader::new(f, 0, plan, &key)?;
    let mut w = File::create(out)?;
    std::io::copy(&mut reader, &mut w)?;
    Ok(out.to_path_buf())
}
