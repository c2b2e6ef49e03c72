//! Kaspersky Security for Windows Server quarantine: `quarantine.db`
//! (SQLite) lists the objects, and each object's bytes sit beside it in a
//! file named by its `{uuid}`, XORed with a repeating 8-byte key.
//!
//! Table `objects` (uuid, path, name, virname, virtype, level, time, size,
//! status, sent, user): the original path is `path` + `name`; `time` packs
//! a local time as year<<48 | month<<40 | day<<32 | hour<<24 | minute<<16 |
//! second<<8 (seen in the maldump sample and its Kaspersky notes).
//!
//! This is NOT a reader for the consumer products' `QB` quarantine (KIS,
//! KAV: a different, undocumented format) and it has no writer (building
//! an SQLite file is out of scope here).

use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;

use super::sqlite::Db;
use super::util;
use super::{check_vendor, QuarantineEntry, QuarantineReader, Scan, Unreadable, Vendor};

/// The XOR key over the object files (public: published with the
/// quarantine tools that read them).
pub const XOR_KEY: [u8; 8] = [0xE2, 0x45, 0x48, 0xEC, 0x69, 0x0E, 0x5C, 0xAC];
/// The index database of a busy server stays far below this.
const MAX_DB: u64 = 256 << 20;

const LOCATIONS: &[&str] = &[r"ProgramData\Kaspersky Lab\*\*\Quarantine"];

/// XORs with [`XOR_KEY`] (its own inverse).
pub fn xor(data: &[u8]) -> Vec<u8> {
    data.iter()
        .zip(XOR_KEY.iter().cycle())
        .map(|(b, k)| b ^ k)
        .collect()
}

/// The packed local time of `objects.time`.
fn packed_time(v: i64) -> Option<String> {
    let f = |shift: u32, mask: i64| u32::try_from((v >> shift) & mask).ok();
    util::local_rfc3339(
        f(48, 0xFFFF)?,
        f(40, 0xFF)?,
        f(32, 0xFF)?,
        f(24, 0xFF)?,
        f(16, 0xFF)?,
        f(8, 0xFF)?,
    )
}

fn safe_name(id: &str) -> Result<&str> {
    if id.is_empty()
        || id.len() > 80
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-{}".contains(c))
    {
        bail!("object id {id:?} is not a plain name");
    }
    Ok(id)
}

/// The Kaspersky reader.
pub struct Kaspersky;

fn scan_db(root: &Path, dir: &Path, db: &Path, scan: &mut Scan) -> Result<()> {
    let raw = util::read_capped(db, MAX_DB)?;
    let rows = util::guarded(|| Db::open(&raw)?.table("objects"))?;
    for row in rows {
        let one = || -> Result<QuarantineEntry> {
            let id = safe_name(
                row.col(0)
                    .text()
                    .ok_or_else(|| anyhow!("row {} has no uuid", row.rowid))?,
            )?;
            let folder = row.col(1).text().unwrap_or_default();
            let name = row
                .col(2)
                .text()
                .ok_or_else(|| anyhow!("object {id} has no name"))?;
            let file = dir.join(id);
            if !std::fs::symlink_metadata(&file)
                .map(|m| m.is_file())
                .unwrap_or(false)
            {
                bail!("object {id}: its data file is missing");
            }
            Ok(QuarantineEntry {
                vendor: Vendor::Kaspersky,
                original_path: format!("{folder}{name}"),
                detection: row
                    .col(3)
                    .text()
                    .map(str::to_string)
                    .filter(|d| !d.is_empty()),
                quarantined_at: row.col(6).int().and_then(packed_time),
                sha256: None,
                size: row.col(7).int().and_then(|s| u64::try_from(s).ok()),
                record: util::rel(root, &file),
                metadata: Some(util::rel(root, db)),
                locator: id.to_string(),
            })
        };
        match one() {
            Ok(e) => scan.entries.push(e),
            Err(e) => scan.unreadable.push(Unreadable::new(
                Vendor::Kaspersky,
                root,
                db,
                format!("{e:#}"),
            )),
        }
    }
    Ok(())
}

impl QuarantineReader for Kaspersky {
    fn vendor(&self) -> Vendor {
        Vendor::Kaspersky
    }
    fn locations(&self) -> &'static [&'static str] {
        LOCATIONS
    }
    fn scan(&self, root: &Path) -> Scan {
        let v = Vendor::Kaspersky;
        let mut scan = Scan::default();
        for dir in util::resolve_all(root, LOCATIONS) {
            for db in util::files_in(
                v,
                root,
                &dir,
                |n| n.eq_ignore_ascii_case("quarantine.db"),
                &mut scan.unreadable,
            ) {
                if let Err(e) = scan_db(root, &dir, &db, &mut scan) {
                    scan.unreadable
                        .push(Unreadable::new(v, root, &db, format!("{e:#}")));
                }
            }
        }
        scan
    }
    fn extract(&self, root: &Path, entry: &QuarantineEntry) -> Result<Vec<u8>> {
        check_vendor(Vendor::Kaspersky, entry)?;
        let raw = util::read_record(&util::under(root, &entry.record)?)
            .with_context(|| format!("reading {}", entry.record.display()))?;
        let bytes = xor(&raw);
        util::verify(entry, &bytes)?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_and_names() {
        assert_eq!(
            packed_time(0x07E5_081E_0430_3300).as_deref(),
            Some("2021-08-30T04:48:51-00:00")
        );
        assert_eq!(packed_time(-1), None);
        assert!(safe_name("{98571591-f30d-453e-b6ed-6ff2cf218344}").is_ok());
        assert!(safe_name("../x").is_err());
        assert_eq!(xor(&xor(b"abcdefghij")), b"abcdefghij");
    }

    #[test]
    fn a_broken_database_is_reported() {
        let t = tempfile::tempdir().expect("tempdir");
        let q = t
            .path()
            .join("ProgramData/Kaspersky Lab/KSWS/11.0/Quarantine");
        std::fs::create_dir_all(&q).expect("mkdir");
        std::fs::write(q.join("quarantine.db"), b"SQLite format 3\0 but not really").expect("w");
        let s = Kaspersky.scan(t.path());
        assert!(s.entries.is_empty());
        assert_eq!(s.unreadable.len(), 1);
        assert!(
            s.unreadable[0].reason.contains("SQLite"),
            "{:?}",
            s.unreadable
        );
    }
}
