//! Avira quarantine files (`INFECTED\*.qua`): one file per quarantined
//! object, header + original path + the bytes XORed with 0xAA.
//!
//! Layout (little-endian), from the maldump sample and the ERNW/maldump
//! structure notes: magic `AntiVir Qua` padded with NUL to 16 bytes; u32
//! offset of the data; u32 byte length of the path (UTF-16, with its NUL);
//! u32 byte length of an extra-info string; 32 bytes; u32 quarantine time
//! (Unix seconds) at 0x3C; 0x5C bytes; detection name, 64 bytes NUL-padded
//! ASCII, at 0x9C; the path (`\\.\C:\…`) at 0xDC; the extra-info text;
//! then at the data offset the original bytes, each XOR 0xAA.
//!
//! This is NOT a reader for Avira's older per-folder index or its
//! registry-item records; only file records are entries.

use anyhow::{bail, Context, Result};
use std::path::Path;

use super::util::{self, Cursor};
use super::{QuarantineEntry, QuarantineReader, Scan, Vendor};

const MAGIC: &[u8; 16] = b"AntiVir Qua\0\0\0\0\0";
/// Every byte of the original is XORed with this.
const XOR: u8 = 0xAA;
const PATH_AT: usize = 0xDC;

const LOCATIONS: &[&str] = &[
    r"ProgramData\Avira\Antivirus\INFECTED",
    r"Documents and Settings\All Users\Application Data\Avira\AntiVir Desktop\INFECTED",
    r"ProgramData\Avira\AntiVir Desktop\INFECTED",
];

/// A parsed `.qua`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qua {
    pub original_path: String,
    pub detection: String,
    pub time: u32,
    pub data: Vec<u8>,
}

/// Parses a `.qua` file.
pub fn parse(raw: &[u8]) -> Result<Qua> {
    let mut c = Cursor::new(raw);
    if c.take(16).context("header")? != MAGIC {
        bail!("wrong magic: not an Avira .qua");
    }
    let data_at = c.u32()? as usize;
    let path_len = c.u32()? as usize;
    let info_len = c.u32()? as usize;
    let mut c = Cursor::at(raw, 0x3C).context("header")?;
    let time = c.u32()?;
    let mut c = Cursor::at(raw, 0x9C).context("header")?;
    let detection = util::latin_or_utf8(c.take(64)?);
    let path = util::utf16le(c.take(path_len).context("path")?);
    c.take(info_len).context("extra info")?;
    if data_at < c.pos() || data_at > raw.len() {
        bail!(
            "data offset {data_at} is outside {}..{}",
            c.pos(),
            raw.len()
        );
    }
    let data = raw[data_at..].iter().map(|b| b ^ XOR).collect();
    Ok(Qua {
        original_path: util::strip_nt_prefix(&path),
        detection,
        time,
        data,
    })
}

/// Test support: a `.qua` of one file, laid out like the real ones.
pub fn write(original_path: &str, detection: &str, content: &[u8], time: u32) -> Result<Vec<u8>> {
    if detection.len() >= 64 {
        bail!("detection name longer than 63 bytes");
    }
    let mut path = util::to_utf16le(&format!(r"\\.\{original_path}"));
    path.extend_from_slice(&[0, 0]);
    let info: Vec<u8> = [0u8, 0].to_vec();
    let data_at = PATH_AT + path.len() + info.len();
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&u32::try_from(data_at)?.to_le_bytes());
    out.extend_from_slice(&u32::try_from(path.len())?.to_le_bytes());
    out.extend_from_slice(&u32::try_from(info.len())?.to_le_bytes());
    out.resize(0x3C, 0);
    out.extend_from_slice(&time.to_le_bytes());
    out.resize(0x9C, 0);
    out.extend_from_slice(detection.as_bytes());
    out.resize(PATH_AT, 0);
    out.extend(path);
    out.extend(info);
    out.extend(content.iter().map(|b| b ^ XOR));
    Ok(out)
}

/// The Avira reader.
pub struct Avira;

impl QuarantineReader for Avira {
    fn vendor(&self) -> Vendor {
        Vendor::Avira
    }
    fn locations(&self) -> &'static [&'static str] {
        LOCATIONS
    }
    fn scan(&self, root: &Path) -> Scan {
        util::scan_single(
            Vendor::Avira,
            root,
            LOCATIONS,
            |n| util::has_ext(n, "qua"),
            parse,
            |q| util::Described {
                original_path: q.original_path,
                detection: q.detection,
                quarantined_at: util::unix_rfc3339(i64::from(q.time)),
                // A .qua records neither size nor hash of the original: a
                // file cut short in its data part cannot be told from a
                // good one.
                sha256: None,
                size: q.data.len() as u64,
            },
        )
    }
    fn extract(&self, root: &Path, entry: &QuarantineEntry) -> Result<Vec<u8>> {
        util::extract_single(Vendor::Avira, root, entry, parse, |q| q.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_malformed() {
        let w = write(
            r"C:\WINDOWS\system32\user32.dll",
            "TR/Crypt.XPACK.Gen",
            b"MZ..",
            1_600_000_000,
        )
        .expect("write");
        let q = parse(&w).expect("parse");
        assert_eq!(q.original_path, r"C:\WINDOWS\system32\user32.dll");
        assert_eq!(q.detection, "TR/Crypt.XPACK.Gen");
        assert_eq!(q.data, b"MZ..");
        assert!(parse(&w[..100]).is_err());
        let mut bad = w.clone();
        bad[0] = b'X';
        assert!(parse(&bad).unwrap_err().to_string().contains("wrong magic"));
        let mut far = w.clone();
        far[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&far).unwrap_err().to_string().contains("data offset"));
        let mut long = w.clone();
        long[20..24].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
        assert!(format!("{:#}", parse(&long).unwrap_err()).contains("truncated"));
        assert!(write("x", &"A".repeat(64), b"", 0).is_err());
    }
}
