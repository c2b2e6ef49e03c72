//! FortiClient quarantine files (`quarantine\QuarantFile<hex>_<n>`): one
//! file per object, header + path + detection + the bytes XORed with 0xAB.
//!
//! Layout (little-endian), from the maldump sample and the maldump
//! structure notes: magic `QUARF` + 3 NUL; u32; u32; 36 bytes whose bytes
//! 2..34 are the SHA-256 of the original (seen in the sample: it equals
//! the EICAR hash); u32 size of the original at 0x34; 16-byte time (u16
//! year, month, time-zone, day, hour, minute, second, ms) at 0x38; 12
//! bytes; u32 file id; u32 byte length of the path; u32 byte length of the
//! detection name (both UTF-16, no NUL); the path (`\\?\C:\…`); the
//! name; then the original bytes, each XOR 0xAB.
//!
//! This is NOT a reader for the `.meta` files some versions keep beside
//! the records, nor for FortiClient's quarantine database.

use anyhow::{bail, Context, Result};
use std::path::Path;

use super::util::{self, Cursor};
use super::{QuarantineEntry, QuarantineReader, Scan, Vendor};

const MAGIC: &[u8; 8] = b"QUARF\0\0\0";
const XOR: u8 = 0xAB;

const LOCATIONS: &[&str] = &[
    r"Program Files\Fortinet\FortiClient\quarantine",
    r"Program Files (x86)\Fortinet\FortiClient\quarantine",
];

/// A parsed FortiClient record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarf {
    pub original_path: String,
    pub detection: String,
    pub sha256: String,
    pub time: Option<String>,
    pub data: Vec<u8>,
}

/// Parses a FortiClient quarantine file.
pub fn parse(raw: &[u8]) -> Result<Quarf> {
    let mut c = Cursor::new(raw);
    if c.take(8).context("header")? != MAGIC {
        bail!("wrong magic: not a FortiClient QUARF record");
    }
    c.skip(8)?;
    let hashes = c.take(36)?;
    let sha256 = util::hex(&hashes[2..34]);
    let size = c.u32()?;
    let mut t = [0u16; 8];
    for v in &mut t {
        *v = c.u16()?;
    }
    let time = util::local_rfc3339(
        u32::from(t[0]),
        u32::from(t[1]),
        u32::from(t[3]),
        u32::from(t[4]),
        u32::from(t[5]),
        u32::from(t[6]),
    );
    c.skip(12)?;
    let _file_id = c.u32()?;
    let path_len = c.u32()? as usize;
    let name_len = c.u32()? as usize;
    let path = util::utf16le(c.take(path_len).context("path")?);
    let detection = util::utf16le(c.take(name_len).context("detection name")?);
    let data: Vec<u8> = c.rest().iter().map(|b| b ^ XOR).collect();
    if data.len() as u64 != u64::from(size) {
        bail!("header says {size} bytes, the record holds {}", data.len());
    }
    Ok(Quarf {
        original_path: util::strip_nt_prefix(&path),
        detection,
        sha256,
        time,
        data,
    })
}

/// The FortiClient reader.
pub struct Forticlient;

impl QuarantineReader for Forticlient {
    fn vendor(&self) -> Vendor {
        Vendor::Forticlient
    }
    fn locations(&self) -> &'static [&'static str] {
        LOCATIONS
    }
    fn scan(&self, root: &Path) -> Scan {
        util::scan_single(
            Vendor::Forticlient,
            root,
            LOCATIONS,
            |n| {
                n.len() > 11
                    && n[..11].eq_ignore_ascii_case("QuarantFile")
                    && !util::has_ext(n, "meta")
            },
            parse,
            |q| util::Described {
                original_path: q.original_path,
                detection: q.detection,
                quarantined_at: q.time,
                sha256: Some(q.sha256),
                size: q.data.len() as u64,
            },
        )
    }
    fn extract(&self, root: &Path, entry: &QuarantineEntry) -> Result<Vec<u8>> {
        util::extract_single(Vendor::Forticlient, root, entry, parse, |q| q.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal record built field by field (no writer: the two leading
    /// u32s and the 12 bytes after the time are not understood).
    fn record(size: u32, payload: &[u8]) -> Vec<u8> {
        let mut r = MAGIC.to_vec();
        r.extend_from_slice(&[0; 8]);
        r.extend_from_slice(&[0; 36]);
        r.extend_from_slice(&size.to_le_bytes());
        for v in [2021u16, 8, 3, 25, 7, 27, 53, 0] {
            r.extend_from_slice(&v.to_le_bytes());
        }
        r.extend_from_slice(&[0; 12]);
        r.extend_from_slice(&0u32.to_le_bytes());
        let p = util::to_utf16le(r"\\?\C:\x.dll");
        let n = util::to_utf16le("EICAR");
        r.extend_from_slice(&(p.len() as u32).to_le_bytes());
        r.extend_from_slice(&(n.len() as u32).to_le_bytes());
        r.extend(p);
        r.extend(n);
        r.extend(payload.iter().map(|b| b ^ XOR));
        r
    }

    #[test]
    fn parses_and_refuses() {
        let q = parse(&record(3, b"abc")).expect("parse");
        assert_eq!(q.original_path, r"C:\x.dll");
        assert_eq!(q.detection, "EICAR");
        assert_eq!(q.data, b"abc");
        assert_eq!(q.time.as_deref(), Some("2021-08-25T07:27:53-00:00"));
        assert!(parse(&record(4, b"abc"))
            .unwrap_err()
            .to_string()
            .contains("header says"));
        assert!(parse(&record(3, b"abc")[..70]).is_err());
        let mut bad = record(3, b"abc");
        bad[0] = 0;
        assert!(parse(&bad).unwrap_err().to_string().contains("wrong magic"));
        let mut long = record(3, b"abc");
        long[0x58..0x5C].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(format!("{:#}", parse(&long).unwrap_err()).contains("truncated"));
    }
}
