//! G Data quarantine files (`AVK\Quarantine\*.q`): two RC4-encrypted
//! metadata blocks and the RC4-encrypted original, each block encrypted
//! on its own with one fixed 16-byte key ([`RC4_KEY`]).
//!
//! Layout (little-endian), from the maldump sample and the ERNW/maldump
//! structure notes: magic `CA FE BA BE`, u32 length, block 1; magic
//! `BA AD F0 0D`, u32 length, block 2; the original to the end of file.
//! Block 1: five u32 (the fourth is the quarantine time, Unix seconds),
//! then the detection name. Block 2: u32, u32, u32 size, a string, u32,
//! u32, three FILETIMEs, u32, u32 size again, the original path
//! (`\\?\C:\…`). Strings are MFC `CArchive` Unicode strings: `FF FE FF`,
//! then the length in UTF-16 units as a byte, or `FF` + u16, or `FF FF`
//! + u32 ([MFC CString serialization]).
//!
//! This is NOT a reader for G Data's older (pre-2010) quarantine.

use anyhow::{bail, Context, Result};
use std::path::Path;

use super::util::{self, Cursor};
use super::{QuarantineEntry, QuarantineReader, Scan, Vendor};

/// G Data's quarantine key (public: published with quarantine tools).
pub const RC4_KEY: [u8; 16] = [
    0xA7, 0xBF, 0x73, 0xA0, 0x9F, 0x03, 0xD3, 0x11, 0x85, 0x6F, 0x00, 0x80, 0xAD, 0xA9, 0x6E, 0x9B,
];
const MAGIC1: [u8; 4] = [0xCA, 0xFE, 0xBA, 0xBE];
const MAGIC2: [u8; 4] = [0xBA, 0xAD, 0xF0, 0x0D];
/// Metadata blocks are a few hundred bytes.
const MAX_BLOCK: u32 = 1 << 20;

const LOCATIONS: &[&str] = &[
    r"ProgramData\G Data\AVK\Quarantine",
    r"ProgramData\G DATA\AntiVirenKit\Quarantine",
    r"Documents and Settings\All Users\Application Data\G DATA\AntiVirenKit\Quarantine",
];

/// A parsed `.q`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GdataRecord {
    pub original_path: String,
    pub detection: String,
    pub time: u32,
    pub size: u32,
    pub data: Vec<u8>,
}

fn block<'a>(c: &mut Cursor<'a>, magic: [u8; 4], what: &str) -> Result<Vec<u8>> {
    if c.take(4).with_context(|| format!("{what} magic"))? != magic {
        bail!("wrong {what} magic: not a G Data .q");
    }
    let len = c.u32()?;
    if len > MAX_BLOCK {
        bail!("{what} declares {len} bytes");
    }
    let mut b = c
        .take(len as usize)
        .with_context(|| what.to_string())?
        .to_vec();
    util::rc4(&RC4_KEY, &mut b)?;
    Ok(b)
}

/// An MFC CArchive Unicode string.
fn mfc_string(c: &mut Cursor<'_>) -> Result<String> {
    if c.take(3)? != [0xFF, 0xFE, 0xFF] {
        bail!("string at offset {} lacks the FF FE FF marker", c.pos() - 3);
    }
    let mut n = u64::from(c.u8()?);
    if n == 0xFF {
        n = u64::from(c.u16()?);
        if n == 0xFFFF {
            n = u64::from(c.u32()?);
        }
    }
    Ok(util::utf16le(c.take_len(n * 2)?))
}

fn write_mfc_string(out: &mut Vec<u8>, s: &str) {
    let units = util::to_utf16le(s);
    let n = units.len() / 2;
    out.extend_from_slice(&[0xFF, 0xFE, 0xFF]);
    if n < 0xFF {
        out.push(n as u8);
    } else if n < 0xFFFF {
        out.push(0xFF);
        out.extend_from_slice(&(n as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&[0xFF, 0xFF, 0xFF]);
        out.extend_from_slice(&(n as u32).to_le_bytes());
    }
    out.extend(units);
}

/// Parses a `.q` file.
pub fn parse(raw: &[u8]) -> Result<GdataRecord> {
    let mut c = Cursor::new(raw);
    let b1 = block(&mut c, MAGIC1, "block 1")?;
    let b2 = block(&mut c, MAGIC2, "block 2")?;
    let mut data = c.rest().to_vec();
    util::rc4(&RC4_KEY, &mut data)?;

    let mut m = Cursor::new(&b1);
    m.skip(12)?;
    let time = m.u32()?;
    m.skip(4)?;
    let detection = mfc_string(&mut m).context("detection name")?;

    let mut m = Cursor::new(&b2);
    m.skip(8)?;
    let size = m.u32()?;
    mfc_string(&mut m)?;
    m.skip(8 + 24 + 8)?;
    let original = mfc_string(&mut m).context("original path")?;
    if data.len() as u64 != u64::from(size) {
        bail!("block 2 says {size} bytes, the record holds {}", data.len());
    }
    Ok(GdataRecord {
        original_path: util::strip_nt_prefix(&original),
        detection,
        time,
        size,
        data,
    })
}

/// Test support: a `.q` of one file in the layout above (fields we do not
/// understand are zero).
pub fn write(original_path: &str, detection: &str, content: &[u8], time: u32) -> Result<Vec<u8>> {
    let size = u32::try_from(content.len())?;
    let mut b1 = vec![0u8; 12];
    b1.extend_from_slice(&time.to_le_bytes());
    b1.extend_from_slice(&[0; 4]);
    write_mfc_string(&mut b1, detection);
    let mut b2 = vec![0u8; 8];
    b2.extend_from_slice(&size.to_le_bytes());
    write_mfc_string(&mut b2, "");
    b2.extend_from_slice(&[0; 8 + 24 + 4]);
    b2.extend_from_slice(&size.to_le_bytes());
    write_mfc_string(&mut b2, &format!(r"\\?\{original_path}"));
    let mut out = Vec::new();
    for (magic, mut b) in [(MAGIC1, b1), (MAGIC2, b2)] {
        out.extend_from_slice(&magic);
        out.extend_from_slice(&u32::try_from(b.len())?.to_le_bytes());
        util::rc4(&RC4_KEY, &mut b)?;
        out.extend(b);
    }
    let mut data = content.to_vec();
    util::rc4(&RC4_KEY, &mut data)?;
    out.extend(data);
    Ok(out)
}

/// The G Data reader.
pub struct Gdata;

impl QuarantineReader for Gdata {
    fn vendor(&self) -> Vendor {
        Vendor::Gdata
    }
    fn locations(&self) -> &'static [&'static str] {
        LOCATIONS
    }
    fn scan(&self, root: &Path) -> Scan {
        util::scan_single(
            Vendor::Gdata,
            root,
            LOCATIONS,
            |n| util::has_ext(n, "q"),
            parse,
            |q| util::Described {
                original_path: q.original_path,
                detection: q.detection,
                quarantined_at: util::unix_rfc3339(i64::from(q.time)),
                sha256: None,
                size: u64::from(q.size),
            },
        )
    }
    fn extract(&self, root: &Path, entry: &QuarantineEntry) -> Result<Vec<u8>> {
        util::extract_single(Vendor::Gdata, root, entry, parse, |q| q.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_long_names_and_malformed() {
        let long = format!(r"C:\{}\user32.dll", "d".repeat(300));
        let w = write(&long, "Win32.Trojan.Agent", b"MZ", 1_600_000_000).expect("write");
        let q = parse(&w).expect("parse");
        assert_eq!(q.original_path, long);
        assert_eq!(q.detection, "Win32.Trojan.Agent");
        assert_eq!(q.data, b"MZ");
        assert!(parse(&w[..20]).is_err());
        let mut bad = w.clone();
        bad[0] = 0;
        assert!(parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("wrong block 1 magic"));
        let mut huge = w.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&huge).unwrap_err().to_string().contains("declares"));
        let mut more = w.clone();
        more.push(0);
        assert!(parse(&more)
            .unwrap_err()
            .to_string()
            .contains("block 2 says"));
    }
}
