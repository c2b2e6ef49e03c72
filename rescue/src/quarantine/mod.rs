//! Anti-virus quarantines on a mounted Windows volume: find what each
//! vendor quarantined, say where it came from, and give back the original
//! bytes so a wrongly quarantined system file can be restored.
//!
//! One [`QuarantineReader`] per vendor format; [`all_readers`] is the
//! registry and [`scan_all`] runs every reader over a volume. A scan never
//! stops at a bad record: a corrupt, truncated or hostile record becomes an
//! [`Unreadable`] with the reason, and the other records are still read.
//! Extraction is separate ([`QuarantineReader::extract`]) because the
//! engine only needs the bytes of the few entries a playbook restores.
//!
//! This is NOT a restore: nothing here writes to the volume, deletes a
//! record or edits a vendor's index ([`fixture`], test support, is the one
//! writer). It does not decide what to restore (that is the engine's and
//! the playbook's job). It does not read Symantec `.vbn` (public notes
//! describe two versions and a chunked payload only in part, and there is
//! no real sample to check a reader against) nor Sophos (its SafeStore is
//! an encrypted SQLite database whose cipher is not publicly described).
//! Every record is untrusted input: read with a size cap ([`MAX_RECORD`]),
//! parsed with bounds checks, under a panic guard; symlinks (how an NTFS
//! reparse point appears) are never followed.
//!
//! The formats were learnt from real quarantine records of the EICAR test
//! file (the maldump and defender-dump test sets) and from the maldump
//! project's per-vendor notes; each module cites what it relies on.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub mod avast;
pub mod avira;
pub mod defender;
pub mod eset;
pub mod fixture;
pub mod forticlient;
pub mod gdata;
pub mod kaspersky;
pub mod malwarebytes;
pub mod mcafee_ens;
pub mod mcafee_vse;
mod sqlite;
mod util;
mod xml;

/// The rescue runs from RAM: one quarantined file (or record holding it)
/// above 512 MiB is not a system file we would restore, and reading it
/// could exhaust memory.
pub const MAX_RECORD: u64 = 512 << 20;

/// A quarantine format, by vendor. The serde spellings are stable: they
/// are what playbooks write (`vendor = "mcafee-ens"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Vendor {
    /// Microsoft Defender (Windows 8 and later, and Defender on 7).
    Defender,
    /// McAfee Endpoint Security (ENS): password-protected zip + QuarMeta.
    McafeeEns,
    /// McAfee VirusScan Enterprise `.bup` (OLE2, XOR 0x6A): [`crate::bup`].
    McafeeVse,
    /// Symantec / Norton `.vbn`: not read (no public sample, see module doc).
    Symantec,
    /// Kaspersky Security for Windows Server (`quarantine.db` + XORed files).
    Kaspersky,
    /// ESET (`.NQF` + `virlog.dat`).
    Eset,
    /// Sophos: not read (no public sample, see module doc).
    Sophos,
    /// Avast and AVG (one engine, one "chest" format, two folders).
    Avast,
    /// Avira (`.qua`).
    Avira,
    /// Malwarebytes (`.quar` + `.data`, RC4).
    Malwarebytes,
    /// G Data (`.q`, RC4).
    Gdata,
    /// FortiClient (`QUARF`).
    Forticlient,
    /// Any vendor: a playbook wildcard, never the vendor of an entry.
    Any,
}

impl Vendor {
    /// Every value, in declaration order.
    pub const ALL: [Vendor; 13] = [
        Vendor::Defender,
        Vendor::McafeeEns,
        Vendor::McafeeVse,
        Vendor::Symantec,
        Vendor::Kaspersky,
        Vendor::Eset,
        Vendor::Sophos,
        Vendor::Avast,
        Vendor::Avira,
        Vendor::Malwarebytes,
        Vendor::Gdata,
        Vendor::Forticlient,
        Vendor::Any,
    ];

    /// The stable spelling (same as serde).
    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::Defender => "defender",
            Vendor::McafeeEns => "mcafee-ens",
            Vendor::McafeeVse => "mcafee-vse",
            Vendor::Symantec => "symantec",
            Vendor::Kaspersky => "kaspersky",
            Vendor::Eset => "eset",
            Vendor::Sophos => "sophos",
            Vendor::Avast => "avast",
            Vendor::Avira => "avira",
            Vendor::Malwarebytes => "malwarebytes",
            Vendor::Gdata => "gdata",
            Vendor::Forticlient => "forticlient",
            Vendor::Any => "any",
        }
    }

    /// Whether a playbook's `want` selects entries of `self`.
    pub fn matches(self, want: Vendor) -> bool {
        want == Vendor::Any || want == self
    }
}

impl std::fmt::Display for Vendor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Vendor {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Vendor::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| anyhow::anyhow!("unknown quarantine vendor {s:?}"))
    }
}

/// One quarantined file, as its vendor recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    pub vendor: Vendor,
    /// The Windows path it was taken from, as recorded (Win32 namespace
    /// prefixes such as `\\?\` removed), e.g. `C:\WINDOWS\system32\user32.dll`.
    pub original_path: String,
    /// The vendor's detection name, e.g. `Virus:DOS/EICAR_Test_File`.
    pub detection: Option<String>,
    /// When it was quarantined, RFC 3339; `-00:00` when the record holds a
    /// local time without zone.
    pub quarantined_at: Option<String>,
    /// SHA-256 of the original bytes (lowercase hex) as the vendor
    /// recorded it (Avast vault, ESET, FortiClient, Malwarebytes); None
    /// when the record holds no hash. `extract` checks it. Never computed
    /// by us: a hash of what we decoded would vouch for nothing.
    pub sha256: Option<String>,
    /// Size of the original bytes: as recorded where the format records
    /// it, else the size of the stored bytes. `extract` checks it.
    pub size: Option<u64>,
    /// The file holding the bytes, relative to the volume root.
    pub record: PathBuf,
    /// The separate metadata file the entry was described by (Defender's
    /// `Entries\{GUID}`, Avast's `index.xml` …), relative, if any.
    pub metadata: Option<PathBuf>,
    /// Which item inside `record` (reader-specific: a stream, a row id).
    pub locator: String,
}

/// A record (or folder) that could not be read, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreadable {
    pub vendor: Vendor,
    /// Relative to the volume root.
    pub path: PathBuf,
    pub reason: String,
}

impl Unreadable {
    pub(crate) fn new(vendor: Vendor, root: &Path, path: &Path, reason: String) -> Self {
        Unreadable {
            vendor,
            path: util::rel(root, path),
            reason,
        }
    }
}

/// What one or more readers found on a volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scan {
    pub entries: Vec<QuarantineEntry>,
    pub unreadable: Vec<Unreadable>,
}

impl Scan {
    fn absorb(&mut self, other: Scan) {
        self.entries.extend(other.entries);
        self.unreadable.extend(other.unreadable);
    }
}

/// Errors a caller may want to tell apart from "this record is damaged".
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Larger than [`MAX_RECORD`]: refused before reading.
    #[error("{what} is {size} bytes, more than the {cap} we accept")]
    TooLarge { what: String, size: u64, cap: u64 },
    /// The bytes decoded, but not to what the record promised.
    #[error("{}: extracted bytes do not match the recorded {what}", record.display())]
    Mismatch { record: PathBuf, what: String },
    /// The entry was made by another reader.
    #[error("entry of {got} handed to the {want} reader")]
    WrongVendor { want: Vendor, got: Vendor },
}

/// A vendor's quarantine format.
pub trait QuarantineReader: Send + Sync {
    /// Which vendor this reads.
    fn vendor(&self) -> Vendor;
    /// Quarantine folders relative to the Windows volume root, components
    /// separated by `\`, matched without case, `*` for any one folder.
    fn locations(&self) -> &'static [&'static str];
    /// Every entry in this vendor's folders under `root`, and the records
    /// that could not be read. Never panics, never stops at a bad record.
    fn scan(&self, root: &Path) -> Scan;
    /// The original bytes of `entry` (decrypted, de-obfuscated), checked
    /// against its recorded size and SHA-256.
    fn extract(&self, root: &Path, entry: &QuarantineEntry) -> Result<Vec<u8>>;
}

/// Every reader, one per vendor format we can read.
pub fn all_readers() -> Vec<Box<dyn QuarantineReader>> {
    vec![
        Box::new(defender::Defender),
        Box::new(mcafee_ens::McafeeEns),
        Box::new(mcafee_vse::McafeeVse),
        Box::new(kaspersky::Kaspersky),
        Box::new(eset::Eset),
        Box::new(avast::Avast),
        Box::new(avira::Avira),
        Box::new(malwarebytes::Malwarebytes),
        Box::new(gdata::Gdata),
        Box::new(forticlient::Forticlient),
    ]
}

/// The reader for `vendor`, if we have one.
pub fn reader_for(vendor: Vendor) -> Option<Box<dyn QuarantineReader>> {
    all_readers().into_iter().find(|r| r.vendor() == vendor)
}

/// Runs every reader over `root`. Entries and unreadable records are
/// sorted (by vendor, then path) so reports are stable.
pub fn scan_all(root: &Path) -> Scan {
    let mut all = Scan::default();
    for r in all_readers() {
        all.absorb(r.scan(root));
    }
    all.entries
        .sort_by(|a, b| (a.vendor, &a.record, &a.locator).cmp(&(b.vendor, &b.record, &b.locator)));
    all.unreadable
        .sort_by(|a, b| (a.vendor, &a.path).cmp(&(b.vendor, &b.path)));
    all
}

/// Extracts `entry` with the reader of its vendor.
pub fn extract(root: &Path, entry: &QuarantineEntry) -> Result<Vec<u8>> {
    let r = reader_for(entry.vendor)
        .ok_or_else(|| anyhow::anyhow!("no reader for {} quarantines", entry.vendor))?;
    r.extract(root, entry)
}

fn check_vendor(want: Vendor, entry: &QuarantineEntry) -> Result<()> {
    if entry.vendor != want {
        return Err(RecordError::WrongVendor {
            want,
            got: entry.vendor,
        }
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_spellings_are_stable() {
        for v in Vendor::ALL {
            let json = serde_json::to_string(&v).expect("json");
            assert_eq!(json, format!("\"{}\"", v.as_str()));
            assert_eq!(v.as_str().parse::<Vendor>().expect("parse"), v);
        }
        assert_eq!(Vendor::McafeeEns.as_str(), "mcafee-ens");
        assert!(Vendor::Avast.matches(Vendor::Any));
        assert!(!Vendor::Avast.matches(Vendor::Avira));
        assert!("norton".parse::<Vendor>().is_err());
    }

    #[test]
    fn every_reader_is_registered_once() {
        let mut vs: Vec<Vendor> = all_readers().iter().map(|r| r.vendor()).collect();
        let n = vs.len();
        vs.sort();
        vs.dedup();
        assert_eq!(vs.len(), n);
        assert!(!vs.contains(&Vendor::Any));
        for r in all_readers() {
            assert!(!r.locations().is_empty(), "{}", r.vendor());
        }
    }

    #[test]
    fn empty_volume_scans_empty() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = scan_all(t.path());
        assert!(s.entries.is_empty() && s.unreadable.is_empty(), "{s:?}");
    }
}
