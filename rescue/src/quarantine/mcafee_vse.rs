//! McAfee VirusScan Enterprise `.bup` records, behind the
//! [`QuarantineReader`] trait: a thin adapter over [`crate::bup`], which
//! owns the format, the folders and the writer.
//!
//! This is NOT a second `.bup` parser; it only maps `bup`'s results to
//! [`QuarantineEntry`] values (one per `File_N` stream).

use anyhow::{anyhow, Context, Result};
use std::path::Path;

use super::util;
use super::{check_vendor, QuarantineEntry, QuarantineReader, Scan, Unreadable, Vendor};

/// The folders `bup::scan_quarantine` searches (kept in step by hand).
const LOCATIONS: &[&str] = &[
    r"Quarantine",
    r"Documents and Settings\All Users\Application Data\McAfee\VirusScan\Quarantine",
    r"ProgramData\McAfee\VirusScan\Quarantine",
];

/// The VSE `.bup` reader.
pub struct McafeeVse;

impl QuarantineReader for McafeeVse {
    fn vendor(&self) -> Vendor {
        Vendor::McafeeVse
    }

    fn locations(&self) -> &'static [&'static str] {
        LOCATIONS
    }

    fn scan(&self, root: &Path) -> Scan {
        let (found, bad) = crate::bup::scan_quarantine(root);
        let mut scan = Scan::default();
        for (path, bup) in found {
            for e in bup.entries {
                scan.entries.push(QuarantineEntry {
                    vendor: Vendor::McafeeVse,
                    original_path: e.original_name,
                    detection: bup.detection.clone(),
                    quarantined_at: None,
                    sha256: None,
                    size: Some(e.size),
                    record: util::rel(root, &path),
                    metadata: None,
                    locator: e.stream,
                });
            }
        }
        for (path, reason) in bad {
            scan.unreadable
                .push(Unreadable::new(Vendor::McafeeVse, root, &path, reason));
        }
        scan
    }

    fn extract(&self, root: &Path, entry: &QuarantineEntry) -> Result<Vec<u8>> {
        check_vendor(Vendor::McafeeVse, entry)?;
        let path = util::under(root, &entry.record)?;
        let raw = util::read_capped(&path, crate::bup::MAX_BUP_FILE)
            .with_context(|| format!("reading {}", entry.record.display()))?;
        let bup = crate::bup::read_bup(&raw)?;
        let e = bup
            .entries
            .iter()
            .find(|e| e.stream == entry.locator)
            .ok_or_else(|| {
                anyhow!(
                    "stream {} is gone from {}",
                    entry.locator,
                    entry.record.display()
                )
            })?;
        let bytes = crate::bup::extract(&raw, e)?;
        util::verify(entry, &bytes)?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_reads_what_bup_writes() {
        let t = tempfile::tempdir().expect("tempdir");
        let q = t
            .path()
            .join("Documents and Settings/All Users/Application Data/McAfee/VirusScan/Quarantine");
        std::fs::create_dir_all(&q).expect("mkdir");
        let bytes =
            crate::bup::write_bup(r"C:\WINDOWS\system32\svchost.exe", "W32/Wecorl.a", b"abc")
                .expect("write");
        std::fs::write(q.join("1.bup"), bytes).expect("w");
        std::fs::write(q.join("2.bup"), b"junk").expect("w");
        let s = McafeeVse.scan(t.path());
        assert_eq!(s.entries.len(), 1);
        assert_eq!(s.unreadable.len(), 1);
        let e = &s.entries[0];
        assert_eq!(e.original_path, r"C:\WINDOWS\system32\svchost.exe");
        assert_eq!(e.detection.as_deref(), Some("W32/Wecorl.a"));
        assert_eq!(McafeeVse.extract(t.path(), e).expect("extract"), b"abc");
        let mut wrong = e.clone();
        wrong.locator = "File_7".into();
        assert!(McafeeVse.extract(t.path(), &wrong).is_err());
    }
}
