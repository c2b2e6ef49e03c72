//! Shared plumbing for the quarantine readers: a bounds-checked byte
//! cursor, capped file reads, case-insensitive folder lookup on a mounted
//! Windows volume, text decoding and timestamp formatting.
//!
//! Nothing here knows a vendor format; nothing here writes to the volume.

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use super::{RecordError, Unreadable, Vendor, MAX_RECORD};

/// A little-endian reader over untrusted bytes: every read is checked
/// against the end and fails with the offset, never panics.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    pub(crate) fn at(buf: &'a [u8], pos: usize) -> Result<Self> {
        if pos > buf.len() {
            bail!(
                "offset {pos} is past the end of a {}-byte structure",
                buf.len()
            );
        }
        Ok(Cursor { buf, pos })
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let r = &self.buf[self.pos..];
        self.pos = self.buf.len();
        r
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            bail!(
                "truncated: {n} bytes wanted at offset {}, only {} left",
                self.pos,
                self.remaining()
            );
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// `take` with a length read from the file (u32/u64), refused before
    /// any arithmetic can overflow.
    pub(crate) fn take_len(&mut self, n: u64) -> Result<&'a [u8]> {
        let n = usize::try_from(n).map_err(|_| anyhow!("declared length {n} is absurd"))?;
        self.take(n)
    }

    pub(crate) fn skip(&mut self, n: usize) -> Result<()> {
        self.take(n).map(|_| ())
    }

    /// Skips to the next multiple of `align` counted from `base`.
    pub(crate) fn align(&mut self, base: usize, align: usize) -> Result<()> {
        let off = self.pos.saturating_sub(base) % align;
        if off != 0 {
            self.skip(align - off)?;
        }
        Ok(())
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A NUL-terminated UTF-16LE string (the NUL is consumed).
    pub(crate) fn utf16z(&mut self) -> Result<String> {
        let start = self.pos;
        let mut units = Vec::new();
        loop {
            let u = self
                .u16()
                .with_context(|| format!("unterminated UTF-16 string at offset {start}"))?;
            if u == 0 {
                break;
            }
            units.push(u);
        }
        Ok(String::from_utf16_lossy(&units))
    }

    /// A NUL-terminated 8-bit string (the NUL is consumed).
    pub(crate) fn cstr(&mut self) -> Result<String> {
        let start = self.pos;
        let rest = &self.buf[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| anyhow!("unterminated string at offset {start}"))?;
        self.pos += n + 1;
        Ok(latin_or_utf8(&rest[..n]))
    }
}

/// RC4 with one of the fixed public keys these vendors use (Defender:
/// 256 bytes; G Data, Malwarebytes: 16), applied in place. RC4 is its own
/// inverse, so this both decrypts records and encrypts fixtures.
pub(crate) fn rc4(key: &[u8], data: &mut [u8]) -> Result<()> {
    use rc4::consts::{U16, U256};
    use rc4::{KeyInit, Rc4, StreamCipher};
    match key.len() {
        256 => Rc4::<U256>::new_from_slice(key)
            .map_err(|_| anyhow!("bad RC4 key length"))?
            .apply_keystream(data),
        16 => Rc4::<U16>::new_from_slice(key)
            .map_err(|_| anyhow!("bad RC4 key length"))?
            .apply_keystream(data),
        n => bail!("no RC4 key of {n} bytes is used by any reader"),
    }
    Ok(())
}

/// UTF-16LE bytes to a string, stopping at the first NUL unit.
pub(crate) fn utf16le(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// Encodes `s` as UTF-16LE, without terminator.
pub(crate) fn to_utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// 8-bit text up to the first NUL: UTF-8 when it is, else Latin-1 (the
/// detection names in these formats are ASCII in practice).
pub(crate) fn latin_or_utf8(bytes: &[u8]) -> String {
    let bytes = bytes.split(|&b| b == 0).next().unwrap_or_default();
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

/// Drops the Win32 namespace prefixes vendors keep in recorded paths
/// (`\\?\C:\…`, `\\.\C:\…`) so the path reads as the user knew it.
/// `\\?\UNC\server\share` becomes `\\server\share`.
pub(crate) fn strip_nt_prefix(p: &str) -> String {
    if let Some(rest) = p
        .strip_prefix(r"\\?\UNC\")
        .or_else(|| p.strip_prefix(r"\??\UNC\"))
    {
        return format!(r"\\{rest}");
    }
    for pre in [r"\\?\", r"\\.\", r"\??\"] {
        if let Some(rest) = p.strip_prefix(pre) {
            return rest.to_string();
        }
    }
    p.to_string()
}

/// RFC 3339 (UTC) for seconds since 1970; None before 1970 or absurd.
pub(crate) fn unix_rfc3339(secs: i64) -> Option<String> {
    // Year 9999 ends at 253402300799: humantime formats no later.
    if !(1..=253_402_300_799).contains(&secs) {
        return None;
    }
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?);
    Some(humantime::format_rfc3339_seconds(t).to_string())
}

/// Windows FILETIME: 100 ns ticks since 1601-01-01 UTC ([MS-DTYP] 2.3.3).
pub(crate) fn filetime_rfc3339(ft: u64) -> Option<String> {
    const TICKS: u64 = 10_000_000;
    const EPOCH_DIFF: u64 = 11_644_473_600;
    let secs = (ft / TICKS).checked_sub(EPOCH_DIFF)?;
    unix_rfc3339(i64::try_from(secs).ok()?)
}

/// A wall-clock time whose zone the record does not say: RFC 3339 writes
/// an unknown local offset as `-00:00` (RFC 3339 section 4.3).
pub(crate) fn local_rfc3339(y: u32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Option<String> {
    let ok = (1601..=9999).contains(&y)
        && (1..=12).contains(&mo)
        && (1..=31).contains(&d)
        && h < 24
        && mi < 60
        && s < 61;
    ok.then(|| format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}-00:00"))
}

/// The SHA-256 of `bytes` as lowercase hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a whole record file, refusing one above `cap` before reading it.
pub(crate) fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let lm = std::fs::symlink_metadata(path).context("opening")?;
    if lm.file_type().is_symlink() {
        bail!("a symlink or reparse point; not followed");
    }
    let f = std::fs::File::open(path).context("opening")?;
    let meta = f.metadata().context("reading its size")?;
    if !meta.is_file() {
        bail!("not a regular file");
    }
    if meta.len() > cap {
        return Err(RecordError::TooLarge {
            what: "record file".into(),
            size: meta.len(),
            cap,
        }
        .into());
    }
    let mut buf = Vec::new();
    f.take(cap + 1).read_to_end(&mut buf).context("reading")?;
    if buf.len() as u64 > cap {
        bail!("the file grew past {cap} bytes while being read");
    }
    Ok(buf)
}

/// [`read_capped`] with the quarantine-wide cap.
pub(crate) fn read_record(path: &Path) -> Result<Vec<u8>> {
    read_capped(path, MAX_RECORD)
}

/// Refuses a declared payload size above the cap before allocating for it.
pub(crate) fn check_declared(what: &str, size: u64) -> Result<()> {
    if size > MAX_RECORD {
        return Err(RecordError::TooLarge {
            what: what.to_string(),
            size,
            cap: MAX_RECORD,
        }
        .into());
    }
    Ok(())
}

/// Every directory under `root` matching a location pattern: components
/// split on `\`, compared without case (NTFS mounted on Linux keeps the
/// case Windows stored, which differs between XP and later), `*` matches
/// any one directory. Symlinks are not entered.
pub(crate) fn resolve(root: &Path, pattern: &str) -> Vec<PathBuf> {
    let mut level = vec![root.to_path_buf()];
    for part in pattern.split('\\').filter(|p| !p.is_empty()) {
        let mut next = Vec::new();
        for dir in &level {
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in rd.flatten() {
                let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if is_dir
                    && (part == "*" || e.file_name().to_string_lossy().eq_ignore_ascii_case(part))
                {
                    next.push(e.path());
                }
            }
        }
        level = next;
    }
    level.sort();
    level.dedup();
    level
}

/// Every quarantine folder of `locations` under `root`, deduplicated.
pub(crate) fn resolve_all(root: &Path, locations: &[&str]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = locations.iter().flat_map(|l| resolve(root, l)).collect();
    v.sort();
    v.dedup();
    v
}

/// The regular files directly in `dir` whose name satisfies `want`, sorted.
/// A matching name that is a symlink (or reparse point shown as one) is
/// reported as unreadable: it could point anywhere on the rescue system.
pub(crate) fn files_in(
    vendor: Vendor,
    root: &Path,
    dir: &Path,
    want: impl Fn(&str) -> bool,
    bad: &mut Vec<Unreadable>,
) -> Vec<PathBuf> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            bad.push(Unreadable::new(
                vendor,
                root,
                dir,
                format!("cannot list the quarantine folder: {e}"),
            ));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !want(&name) {
            continue;
        }
        let Ok(t) = e.file_type() else { continue };
        if t.is_file() {
            out.push(e.path());
        } else if t.is_symlink() {
            bad.push(Unreadable::new(
                vendor,
                root,
                &e.path(),
                "not a regular file (symlink or reparse point); not followed".into(),
            ));
        }
    }
    out.sort();
    out
}

/// `path` relative to `root` for reports and entries (the path itself if
/// it is not below `root`).
pub(crate) fn rel(root: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(root).unwrap_or(path).to_path_buf()
}

/// The file `rel` names below `root`, refusing `..`, absolute parts and
/// symlinked folders on the way, so an entry handed back to `extract`
/// cannot lead out of the volume.
pub(crate) fn under(root: &Path, rel: &Path) -> Result<PathBuf> {
    use std::path::Component;
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        bail!("record path {} leaves the volume", rel.display());
    }
    let mut at = root.to_path_buf();
    for c in rel.components() {
        at.push(c);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            bail!(
                "record path {} goes through a symlink; not followed",
                rel.display()
            );
        }
    }
    Ok(at)
}

/// Name ends with `ext` (no dot), without case.
pub(crate) fn has_ext(name: &str, ext: &str) -> bool {
    name.len() > ext.len() + 1
        && name.as_bytes()[name.len() - ext.len() - 1] == b'.'
        && name[name.len() - ext.len()..].eq_ignore_ascii_case(ext)
}

/// Checks extracted bytes against what the record promised.
pub(crate) fn verify(
    entry: &super::QuarantineEntry,
    bytes: &[u8],
) -> std::result::Result<(), RecordError> {
    if let Some(size) = entry.size {
        if size != bytes.len() as u64 {
            return Err(RecordError::Mismatch {
                record: entry.record.clone(),
                what: format!("size: recorded {size}, got {}", bytes.len()),
            });
        }
    }
    if let Some(want) = &entry.sha256 {
        let got = sha256_hex(bytes);
        if !want.eq_ignore_ascii_case(&got) {
            return Err(RecordError::Mismatch {
                record: entry.record.clone(),
                what: format!("sha256: recorded {want}, got {got}"),
            });
        }
    }
    Ok(())
}

/// What a record of a one-file-one-entry format (Avira `.qua`, G Data
/// `.q`, FortiClient `QuarantFile*`) says about its entry; the rest of
/// [`super::QuarantineEntry`] comes from where the file is.
pub(crate) struct Described {
    pub original_path: String,
    pub detection: String,
    pub quarantined_at: Option<String>,
    pub sha256: Option<String>,
    pub size: u64,
}

/// Scans a one-file-one-entry format: every file named as `want` says in
/// `vendor`'s folders is read (size-capped), parsed under the panic guard
/// and described; a file that does not parse is an [`Unreadable`].
pub(crate) fn scan_single<T>(
    vendor: Vendor,
    root: &Path,
    locations: &[&str],
    want: impl Fn(&str) -> bool + Copy,
    parse: impl Fn(&[u8]) -> Result<T> + Copy,
    describe: impl Fn(T) -> Described,
) -> super::Scan {
    let mut scan = super::Scan::default();
    for dir in resolve_all(root, locations) {
        for f in files_in(vendor, root, &dir, want, &mut scan.unreadable) {
            match read_record(&f).and_then(|raw| guarded(|| parse(&raw))) {
                Ok(q) => {
                    let d = describe(q);
                    scan.entries.push(super::QuarantineEntry {
                        vendor,
                        original_path: d.original_path,
                        detection: Some(d.detection).filter(|d| !d.is_empty()),
                        quarantined_at: d.quarantined_at,
                        sha256: d.sha256,
                        size: Some(d.size),
                        record: rel(root, &f),
                        metadata: None,
                        locator: String::new(),
                    })
                }
                Err(e) => scan
                    .unreadable
                    .push(Unreadable::new(vendor, root, &f, format!("{e:#}"))),
            }
        }
    }
    scan
}

/// The original bytes of an entry of a one-file-one-entry format: its
/// record read again below `root` (never through a symlink), parsed under
/// the panic guard, `data` taken out and checked against the entry.
pub(crate) fn extract_single<T>(
    vendor: Vendor,
    root: &Path,
    entry: &super::QuarantineEntry,
    parse: impl FnOnce(&[u8]) -> Result<T>,
    data: impl FnOnce(T) -> Vec<u8>,
) -> Result<Vec<u8>> {
    super::check_vendor(vendor, entry)?;
    let raw = read_record(&under(root, &entry.record)?)
        .with_context(|| format!("reading {}", entry.record.display()))?;
    let q = guarded(|| parse(&raw)).with_context(|| entry.record.display().to_string())?;
    let bytes = data(q);
    verify(entry, &bytes)?;
    Ok(bytes)
}

/// Runs a parser over untrusted bytes with a panic guard: the rescue is
/// PID 1, and a panic in a dependency (zip, RC4 key setup) on a crafted
/// record must become an error about that record.
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(anyhow!("the parser failed on this record; it was not used")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_refuses_reads_past_the_end() {
        let mut c = Cursor::new(&[1, 2, 3]);
        assert_eq!(c.u16().expect("u16"), 0x0201);
        assert!(c.u32().is_err());
        assert!(c.take_len(u64::MAX).is_err());
        assert!(Cursor::at(&[0], 2).is_err());
        assert!(Cursor::new(&[b'a', 0, b'b', 0]).utf16z().is_err());
        assert!(Cursor::new(b"abc").cstr().is_err());
    }

    #[test]
    fn times() {
        assert_eq!(
            filetime_rfc3339(0x01d8_0c71_72d9_85da).as_deref(),
            Some("2022-01-18T13:44:00Z")
        );
        assert_eq!(filetime_rfc3339(0), None);
        assert_eq!(unix_rfc3339(0), None);
        assert_eq!(
            local_rfc3339(2021, 8, 25, 7, 27, 53).as_deref(),
            Some("2021-08-25T07:27:53-00:00")
        );
        assert_eq!(local_rfc3339(2021, 13, 1, 0, 0, 0), None);
    }

    #[test]
    fn nt_prefixes() {
        assert_eq!(strip_nt_prefix(r"\\?\C:\x"), r"C:\x");
        assert_eq!(strip_nt_prefix(r"\\.\C:\x"), r"C:\x");
        assert_eq!(strip_nt_prefix(r"\\?\UNC\s\x"), r"\\s\x");
        assert_eq!(strip_nt_prefix(r"C:\x"), r"C:\x");
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_never_followed() {
        use crate::quarantine::{avira, scan_all, QuarantineReader};
        let t = tempfile::tempdir().expect("tempdir");
        let q = t.path().join("ProgramData/Avira/Antivirus/INFECTED");
        std::fs::create_dir_all(&q).expect("mkdir");
        let outside = t.path().join("outside.qua");
        let rec = avira::write(r"C:\x.dll", "y", b"z", 1).expect("write");
        std::fs::write(&outside, &rec).expect("w");
        std::os::unix::fs::symlink(&outside, q.join("link.qua")).expect("symlink");
        std::fs::write(q.join("real.qua"), &rec).expect("w");
        let s = scan_all(t.path());
        assert_eq!(s.entries.len(), 1);
        assert_eq!(s.unreadable.len(), 1);
        assert!(s.unreadable[0].reason.contains("not followed"));
        // An entry whose record was swapped for a symlink is refused.
        let e = s.entries[0].clone();
        std::fs::remove_file(q.join("real.qua")).expect("rm");
        std::os::unix::fs::symlink(&outside, q.join("real.qua")).expect("symlink");
        let err = avira::Avira.extract(t.path(), &e).unwrap_err();
        assert!(format!("{err:#}").contains("not followed"), "{err:#}");
        // So is one whose folder became a symlink.
        std::fs::remove_file(q.join("real.qua")).expect("rm");
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("mkdir");
        std::fs::write(elsewhere.join("real.qua"), &rec).expect("w");
        std::fs::remove_file(q.join("link.qua")).expect("rm");
        std::fs::remove_dir(&q).expect("rmdir");
        std::os::unix::fs::symlink(&elsewhere, &q).expect("symlink");
        let err = avira::Avira.extract(t.path(), &e).unwrap_err();
        assert!(format!("{err:#}").contains("through a symlink"), "{err:#}");
    }

    #[test]
    fn extensions_and_escapes() {
        assert!(has_ext("a.QUA", "qua"));
        assert!(!has_ext(".qua", "qua"));
        assert!(!has_ext("aqua", "qua"));
        assert!(under(Path::new("/r"), Path::new("../etc/passwd")).is_err());
        assert!(under(Path::new("/r"), Path::new("/etc/passwd")).is_err());
        assert!(under(Path::new("/r"), Path::new("a/b")).is_ok());
    }
}
