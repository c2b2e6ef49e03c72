//! The volume tree: files with Windows-like times, and filler content.

#![allow(unused_imports)]

use super::*;

#[derive(Default)]
pub(super) struct Tree {
    pub(super) files: Vec<(String, Vec<u8>, i64)>,
    pub(super) bad: Vec<String>,
    pub(super) dats: Vec<String>,
}

impl Tree {
    pub(super) fn file(&mut self, path: &str, data: Vec<u8>, mtime: i64) {
        self.files.push((path.to_string(), data, mtime));
    }
    pub(super) fn bad(&mut self, path: &str, data: Vec<u8>, mtime: i64) {
        self.bad.push(path.to_string());
        self.file(path, data, mtime);
    }
    pub(super) fn dat(&mut self, path: &str, data: Vec<u8>, mtime: i64) {
        self.dats.push(path.to_string());
        self.file(path, data, mtime);
    }
    pub(super) fn expect(&self) -> Expect {
        let mut e = Expect::default();
        for (p, d, t) in &self.files {
            let h = sha256_hex(d);
            if self.bad.contains(p) {
                e.bad.insert(p.clone(), h.clone());
            }
            if self.dats.contains(p) {
                e.dats.insert(p.clone(), h.clone());
            }
            e.files.insert(p.clone(), h);
            e.mtimes.insert(p.clone(), *t);
        }
        e
    }
    /// Writes every file below the mounted volume `root` and stamps it.
    pub(super) fn write(&self, root: &Path) -> Result<()> {
        for (p, data, t) in &self.files {
            let host = p.split('\\').fold(root.to_path_buf(), |a, c| a.join(c));
            if let Some(parent) = host.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("creating the folder of {p}"))?;
            }
            fs::write(&host, data).with_context(|| format!("writing {p}"))?;
            set_times(&host, *t).with_context(|| format!("stamping {p}"))?;
        }
        Ok(())
    }
}

/// Sets last-write and access time (utimensat: ntfs-3g maps mtime to the
/// NTFS last data change time) and the NTFS creation time (ntfs-3g's
/// `system.ntfs_crtime` extended attribute, a little-endian FILETIME).
pub(super) fn set_times(path: &Path, unix: i64) -> Result<()> {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(unix)?);
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))?;
    drop(f);
    let filetime = (unix as u64 + 11_644_473_600) * 10_000_000;
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let bytes = filetime.to_le_bytes();
    // SAFETY: both pointers are valid for the lengths given for the call.
    let rc = unsafe {
        libc::setxattr(
            c_path.as_ptr(),
            c"system.ntfs_crtime".as_ptr(),
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
        )
    };
    if rc != 0 {
        bail!(
            "setting the NTFS creation time: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// "YYYY-MM-DD hh:mm:ss" UTC → unix seconds.
pub fn ts(s: &str) -> Result<i64> {
    let n: Vec<i64> = s
        .split(['-', ' ', ':'])
        .map(|x| x.parse::<i64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad timestamp {s:?}"))?;
    let [y, mo, d, h, mi, se] = n[..] else {
        bail!("bad timestamp {s:?}");
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * 86_400 + h * 3600 + mi * 60 + se)
}

/// Deterministic pseudo-random bytes (xorshift64*, seeded from `seed`):
/// distinct, incompressible file contents without storing any.
pub(super) fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut x = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub(super) const XP_BOOT_INI: &str = "[boot loader]\r\ntimeout=30\r\ndefault=multi(0)disk(0)rdisk(0)partition(1)\\WINDOWS\r\n[operating systems]\r\nmulti(0)disk(0)rdisk(0)partition(1)\\WINDOWS=\"Microsoft Windows XP Professional\" /noexecute=optin /fastdetect\r\n";
