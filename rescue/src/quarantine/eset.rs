//! ESET quarantine: `<SHA-1>.NQF` holds the original bytes, each byte
//! `b` stored as `(b ^ 0xA5) + 0x54` (mod 256); what was quarantined from
//! where is recorded in the threat log `virlog.dat`, whose records name the
//! object by the same SHA-1.
//!
//! `virlog.dat` (little-endian), from the maldump sample and its ESET
//! notes: magic `78 F3 9B CF`, u32 header length (records start there),
//! u32 record count. Each record: magic `DC CF 8B 63`, u32 length
//! (including these 8 bytes), 8 bytes `24 00 00 00 01 00 01 00`, u32 id,
//! FILETIME, five u32, then tagged fields to the end: u32 tag whose third
//! byte says the value's type — `N` UTF-16 string (u32 byte length with
//! its NUL), `B` blob (u32 length), `E`/`A` u32, `F`/`J` u64, `C` u8.
//! Tags used: 0x4E0BBE object path, 0x4E1D4D detection name, 0x42139E
//! object SHA-1, 0x4213A4 object SHA-256.
//!
//! This is NOT a reader for the `.NDF` metadata files some ESET versions
//! write beside each `.NQF` (no sample), and an `.NQF` no log record names
//! is reported, not guessed at.

use anyhow::{bail, Context, Result};
use std::path::Path;

use super::util::{self, Cursor};
use super::{check_vendor, QuarantineEntry, QuarantineReader, Scan, Unreadable, Vendor};

const LOG_MAGIC: [u8; 4] = [0x78, 0xF3, 0x9B, 0xCF];
const REC_MAGIC: [u8; 4] = [0xDC, 0xCF, 0x8B, 0x63];
const TAG_PATH: u32 = 0x004E_0BBE;
const TAG_DETECTION: u32 = 0x004E_1D4D;
const TAG_SHA1: u32 = 0x0042_139E;
const TAG_SHA256: u32 = 0x0042_13A4;
/// A threat log of many thousand detections stays below this.
const MAX_LOG: u64 = 64 << 20;

/// The per-user quarantine (Vista and later; XP's `Local Settings`
/// equivalent is assumed, no sample) and the machine-wide log.
const LOCATIONS: &[&str] = &[
    r"Users\*\AppData\Local\ESET\*\Quarantine",
    r"Documents and Settings\*\Local Settings\Application Data\ESET\*\Quarantine",
    r"ProgramData\ESET\*\Quarantine",
];
const LOG_DIRS: &[&str] = &[
    r"ProgramData\ESET\*\Logs",
    r"Documents and Settings\All Users\Application Data\ESET\*\Logs",
];

/// One detection from `virlog.dat`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogRecord {
    pub filetime: u64,
    pub object_path: Option<String>,
    pub detection: Option<String>,
    pub sha1: Option<String>,
    pub sha256: Option<String>,
}

/// Decodes `.NQF` bytes.
pub fn decode(raw: &[u8]) -> Vec<u8> {
    raw.iter().map(|b| b.wrapping_sub(0x54) ^ 0xA5).collect()
}

/// Test support: encodes bytes as an `.NQF` holds them.
pub fn encode(plain: &[u8]) -> Vec<u8> {
    plain
        .iter()
        .map(|b| (b ^ 0xA5).wrapping_add(0x54))
        .collect()
}

/// Parses `virlog.dat`. A record whose fields stop making sense keeps the
/// fields read so far; a broken record frame is an error.
pub fn parse_log(raw: &[u8]) -> Result<Vec<LogRecord>> {
    let mut c = Cursor::new(raw);
    if c.take(4).context("header")? != LOG_MAGIC {
        bail!("wrong magic: not an ESET virlog.dat");
    }
    let hlen = c.u32()? as usize;
    let count = c.u32()?;
    let mut c = Cursor::at(raw, hlen).context("header length")?;
    let mut out = Vec::new();
    for i in 0..count {
        if c.take(4).with_context(|| format!("record {i}"))? != REC_MAGIC {
            bail!("record {i} has a wrong magic");
        }
        let len = c.u32()? as usize;
        let body = c
            .take(
                len.checked_sub(8)
                    .ok_or_else(|| anyhow::anyhow!("record {i} length {len}"))?,
            )
            .with_context(|| format!("record {i}"))?;
        out.push(parse_record(body).with_context(|| format!("record {i}"))?);
    }
    Ok(out)
}

fn parse_record(body: &[u8]) -> Result<LogRecord> {
    let mut c = Cursor::new(body);
    c.skip(8 + 4)?;
    let mut r = LogRecord {
        filetime: c.u64()?,
        ..LogRecord::default()
    };
    c.skip(5 * 4)?;
    while c.remaining() >= 4 {
        let tag = c.u32()?;
        let value: Option<&[u8]> = match (tag >> 16) & 0xFF {
            0x4E | 0x42 => {
                let n = c.u32()?;
                Some(c.take_len(u64::from(n))?)
            }
            0x45 | 0x41 => c.take(4).map(|_| None)?,
            0x46 | 0x4A => c.take(8).map(|_| None)?,
            0x43 => c.take(1).map(|_| None)?,
            // An unknown type: its length is unknown, stop here.
            _ => break,
        };
        let Some(v) = value else { continue };
        match tag {
            TAG_PATH => r.object_path = Some(util::utf16le(v)),
            TAG_DETECTION => r.detection = Some(util::utf16le(v)),
            TAG_SHA1 if v.len() == 20 => r.sha1 = Some(util::hex(v)),
            TAG_SHA256 if v.len() == 32 => r.sha256 = Some(util::hex(v)),
            _ => {}
        }
    }
    Ok(r)
}

/// The ESET reader.
pub struct Eset;

impl QuarantineReader for Eset {
    fn vendor(&self) -> Vendor {
        Vendor::Eset
    }
    fn locations(&self) -> &'static [&'static str] {
        LOCATIONS
    }
    fn scan(&self, root: &Path) -> Scan {
        let v = Vendor::Eset;
        let mut scan = Scan::default();
        let mut log = Vec::new();
        for dir in util::resolve_all(root, LOG_DIRS) {
            for f in util::files_in(
                v,
                root,
                &dir,
                |n| n.eq_ignore_ascii_case("virlog.dat"),
                &mut scan.unreadable,
            ) {
                match util::read_capped(&f, MAX_LOG)
                    .and_then(|raw| util::guarded(|| parse_log(&raw)))
                {
                    Ok(recs) => log.extend(recs.into_iter().map(|r| (f.clone(), r))),
                    Err(e) => scan
                        .unreadable
                        .push(Unreadable::new(v, root, &f, format!("{e:#}"))),
                }
            }
        }
        for dir in util::resolve_all(root, LOCATIONS) {
            for f in util::files_in(
                v,
                root,
                &dir,
                |n| util::has_ext(n, "nqf"),
                &mut scan.unreadable,
            ) {
                let name = f
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_lowercase())
                    .unwrap_or_default();
                // The newest detection of this object that has a path.
                let hit = log
                    .iter()
                    .filter(|(_, r)| {
                        r.sha1.as_deref() == Some(name.as_str()) && r.object_path.is_some()
                    })
                    .max_by_key(|(_, r)| r.filetime);
                let Some((logfile, r)) = hit else {
                    scan.unreadable.push(Unreadable::new(
                        v,
                        root,
                        &f,
                        "no virlog.dat record names this file: original path unknown".into(),
                    ));
                    continue;
                };
                let size = std::fs::metadata(&f).map(|m| m.len()).ok();
                scan.entries.push(QuarantineEntry {
                    vendor: v,
                    original_path: r.object_path.clone().unwrap_or_default(),
                    detection: r.detection.clone().filter(|d| !d.is_empty()),
                    quarantined_at: util::filetime_rfc3339(r.filetime),
                    sha256: r.sha256.clone(),
                    size,
                    record: util::rel(root, &f),
                    metadata: Some(util::rel(root, logfile)),
                    locator: name,
                });
            }
        }
        scan
    }
    fn extract(&self, root: &Path, entry: &QuarantineEntry) -> Result<Vec<u8>> {
        check_vendor(Vendor::Eset, entry)?;
        let raw = util::read_record(&util::under(root, &entry.record)?)
            .with_context(|| format!("reading {}", entry.record.display()))?;
        let bytes = decode(&raw);
        util::verify(entry, &bytes)?;
        // The file is named by the SHA-1 of its bytes: check that too.
        if sha1_hex(&bytes) != entry.locator {
            bail!(
                "{}: bytes do not match the SHA-1 it is named by",
                entry.record.display()
            );
        }
        Ok(bytes)
    }
}

fn sha1_hex(bytes: &[u8]) -> String {
    use sha1::{Digest, Sha1};
    util::hex(&Sha1::digest(bytes))
}

/// Test support: the `.NQF` file name for `bytes` (upper-case SHA-1, as
/// ESET names them).
pub fn nqf_name(bytes: &[u8]) -> String {
    format!("{}.NQF", sha1_hex(bytes).to_uppercase())
}

/// Test support: a `virlog.dat` with one detection per `(path, detection,
/// bytes)`, laid out like the real log.
pub fn write_log(items: &[(&str, &str, &[u8])], filetime: u64) -> Vec<u8> {
    fn s(out: &mut Vec<u8>, tag: u32, v: &str) {
        let mut b = util::to_utf16le(v);
        b.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend(b);
    }
    let mut out = LOG_MAGIC.to_vec();
    out.extend_from_slice(&0x38u32.to_le_bytes());
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    out.resize(0x38, 0);
    for (i, (path, det, bytes)) in items.iter().enumerate() {
        let mut body = vec![0x24, 0, 0, 0, 1, 0, 1, 0];
        body.extend_from_slice(&(i as u32).to_le_bytes());
        body.extend_from_slice(&filetime.to_le_bytes());
        body.extend_from_slice(&[0; 20]);
        s(&mut body, TAG_PATH, path);
        s(&mut body, TAG_DETECTION, det);
        use sha2::Digest;
        body.extend_from_slice(&TAG_SHA1.to_le_bytes());
        body.extend_from_slice(&20u32.to_le_bytes());
        body.extend_from_slice(&sha1::Sha1::digest(bytes));
        body.extend_from_slice(&TAG_SHA256.to_le_bytes());
        body.extend_from_slice(&32u32.to_le_bytes());
        body.extend_from_slice(&sha2::Sha256::digest(bytes));
        out.extend_from_slice(&REC_MAGIC);
        out.extend_from_slice(&((body.len() + 8) as u32).to_le_bytes());
        out.extend(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nqf_coding_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)), all);
    }

    #[test]
    fn scan_pairs_files_with_the_log_and_reports_orphans() {
        let t = tempfile::tempdir().expect("tempdir");
        let q = t
            .path()
            .join("Users/bob/AppData/Local/ESET/ESET Security/Quarantine");
        let l = t.path().join("ProgramData/ESET/ESET Security/Logs");
        std::fs::create_dir_all(&q).expect("mkdir");
        std::fs::create_dir_all(&l).expect("mkdir");
        let user32 = b"MZ user32";
        let log = write_log(
            &[(r"C:\Windows\System32\user32.dll", "Win32/Agent", user32)],
            0x01d8_0000_0000_0000,
        );
        std::fs::write(l.join("virlog.dat"), log).expect("w");
        std::fs::write(q.join(nqf_name(user32)), encode(user32)).expect("w");
        std::fs::write(q.join(nqf_name(b"other")), encode(b"other")).expect("w");
        let s = Eset.scan(t.path());
        assert_eq!(s.entries.len(), 1, "{s:?}");
        assert_eq!(s.unreadable.len(), 1);
        assert!(s.unreadable[0].reason.contains("original path unknown"));
        let e = &s.entries[0];
        assert_eq!(e.original_path, r"C:\Windows\System32\user32.dll");
        assert_eq!(e.detection.as_deref(), Some("Win32/Agent"));
        assert_eq!(Eset.extract(t.path(), e).expect("extract"), user32);
    }

    #[test]
    fn malformed_logs_are_refused() {
        let good = write_log(&[("C:\\x", "y", b"z")], 0x01d8_0000_0000_0000);
        assert!(parse_log(&good).is_ok());
        assert!(parse_log(&good[..good.len() - 3]).is_err());
        let mut bad = good.clone();
        bad[0] = 0;
        assert!(parse_log(&bad)
            .unwrap_err()
            .to_string()
            .contains("wrong magic"));
        let mut far = good.clone();
        far[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_log(&far).is_err());
        let mut many = good.clone();
        many[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_log(&many).is_err());
        // A string field declaring 4 GiB.
        let mut huge = good.clone();
        let at = 0x38 + 8 + 8 + 4 + 8 + 20 + 4;
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(format!("{:#}", parse_log(&huge).unwrap_err()).contains("truncated"));
    }
}
