//! The firmware's Secure Boot databases, read from efivarfs: who owns the
//! platform (`PK`), who may change the databases (`KEK`), what may boot
//! (`db`), what is revoked (`dbx`), and shim's SBAT revocation level.
//!
//! 2026 is the year Microsoft's 2011 certificates expire; a PC whose `db`
//! lacks the Windows UEFI CA 2023, or whose `KEK` lacks the Microsoft KEK
//! 2K CA 2023, cannot take the boot managers signed after that. defib
//! visits PCs that do not boot Windows, so every report carries the
//! inventory ([`Inventory`]) and a judgement ([`Ca2023`]).
//!
//! Variables are read only (never written). Each efivarfs file is four
//! bytes of attributes, then the data (UEFI 2.10 § 3.3). A database is a
//! run of `EFI_SIGNATURE_LIST`s (§ 32.4.1): a 16-byte type GUID, the list,
//! header and signature sizes (u32 each), a header of that size, then
//! signatures of that size, each an owner GUID and the data. Every size is
//! checked against what is left; a bad list ends the parse with a note and
//! keeps what came before.

use crate::bitlocker::Guid;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

/// `EFI_GLOBAL_VARIABLE`: SecureBoot, SetupMode, PK, KEK.
pub const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// `EFI_IMAGE_SECURITY_DATABASE_GUID`: db, dbx.
pub const IMAGE_SECURITY: &str = "d719b2cb-3d3a-4596-a3bc-dad00e67656f";
/// shim's vendor GUID (`SHIM_LOCK_GUID`): `SbatLevelRT`, the runtime copy
/// of the SBAT level shim applied at this boot.
pub const SHIM_LOCK: &str = "605dab50-e046-4300-abb6-3dd810dd8b23";

/// `EFI_CERT_X509_GUID`.
const CERT_X509: &str = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072";
/// `EFI_CERT_SHA256_GUID`.
const CERT_SHA256: &str = "c1c41626-504c-4092-aca9-41f936934328";

/// The largest variable read (dbx holds a few hundred hashes: tens of KiB).
const MAX_VAR: u64 = 1 << 20;
/// At most this many signatures are kept per database.
const MAX_SIGNATURES: usize = 4096;

/// The subject CN of the Windows UEFI CA 2023 (signs Windows' boot
/// manager from 2023 on).
pub const WINDOWS_CA_2023: &str = "Windows UEFI CA 2023";
/// The subject CN of the KEK that may update `db`/`dbx` after 2026.
pub const KEK_CA_2023: &str = "Microsoft Corporation KEK 2K CA 2023";
/// The 2023 third-party CA (shim, option ROMs).
pub const UEFI_CA_2023: &str = "Microsoft UEFI CA 2023";
/// The 2011 third-party CA that signs the shim defib boots through.
pub const UEFI_CA_2011: &str = "Microsoft Corporation UEFI CA 2011";

/// One entry of a signature database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// A certificate: its subject CN (the whole subject when it has no
    /// CN) and the SHA-256 of its DER.
    X509 { subject: String, sha256: String },
    /// A SHA-256 image hash.
    Sha256,
    /// Any other signature type, by GUID.
    Other(String),
}

/// What a database parse gave: the signatures, and why it stopped early.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Database {
    pub signatures: Vec<Signature>,
    pub problem: Option<String>,
}

impl Database {
    /// SHA-256 of each certificate, in order.
    pub fn fingerprints(&self) -> Vec<String> {
        self.signatures
            .iter()
            .filter_map(|s| match s {
                Signature::X509 { sha256, .. } => Some(sha256.clone()),
                _ => None,
            })
            .collect()
    }

    /// Subject CNs of the certificates, in order.
    pub fn subjects(&self) -> Vec<String> {
        self.signatures
            .iter()
            .filter_map(|s| match s {
                Signature::X509 { subject, .. } => Some(subject.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn holds(&self, cn: &str) -> bool {
        self.signatures
            .iter()
            .any(|s| matches!(s, Signature::X509 { subject, .. } if subject == cn))
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parses a database's data (without the attribute bytes).
pub fn parse_database(data: &[u8]) -> Database {
    let mut db = Database::default();
    let mut at = 0usize;
    while at < data.len() {
        let list = match list_at(data, at) {
            Ok(l) => l,
            Err(why) => {
                db.problem = Some(format!("signature list at byte {at}: {why}"));
                break;
            }
        };
        for sig in list.signatures {
            if db.signatures.len() >= MAX_SIGNATURES {
                db.problem = Some(format!("more than {MAX_SIGNATURES} signatures"));
                return db;
            }
            db.signatures.push(sig);
        }
        at += list.size;
    }
    db
}

struct List {
    size: usize,
    signatures: Vec<Signature>,
}

fn list_at(data: &[u8], at: usize) -> Result<List, String> {
    let rest = &data[at..];
    let kind = rest
        .get(..16)
        .and_then(Guid::from_disk)
        .ok_or("shorter than a list header")?
        .to_string();
    let (Some(size), Some(header), Some(sig_size)) =
        (u32_at(rest, 16), u32_at(rest, 20), u32_at(rest, 24))
    else {
        return Err("shorter than a list header".into());
    };
    let (size, header, sig_size) = (size as usize, header as usize, sig_size as usize);
    if size > rest.len() || size < 28 {
        return Err(format!("claims {size} bytes, {} left", rest.len()));
    }
    let body = 28usize
        .checked_add(header)
        .filter(|&b| b <= size)
        .ok_or_else(|| format!("header of {header} bytes does not fit its {size}"))?;
    if sig_size < 16 {
        return Err(format!(
            "signatures of {sig_size} bytes (an owner GUID is 16)"
        ));
    }
    if (size - body) % sig_size != 0 {
        return Err(format!(
            "{} bytes of signatures are not a multiple of {sig_size}",
            size - body
        ));
    }
    let signatures = rest[body..size]
        .chunks_exact(sig_size)
        .map(|s| {
            let payload = &s[16..];
            match kind.as_str() {
                CERT_X509 => certificate(payload),
                CERT_SHA256 => Signature::Sha256,
                _ => Signature::Other(kind.clone()),
            }
        })
        .collect();
    Ok(List { size, signatures })
}

fn certificate(der: &[u8]) -> Signature {
    let sha256 = hex(&Sha256::digest(der));
    let subject = match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => {
            let subject = cert.subject();
            subject
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_string)
                .unwrap_or_else(|| subject.to_string())
        }
        Err(_) => "(unreadable certificate)".to_string(),
    };
    Signature::X509 {
        subject: clean(&subject),
        sha256,
    }
}

/// Printable text only: a subject reaches reports, CSVs and terminals.
fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect::<String>()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `firmware.secure_boot` in the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// The `SecureBoot` variable (null when unreadable).
    pub enabled: Option<bool>,
    /// `SetupMode`: true when no platform key is enrolled (anything boots,
    /// and anything may enrol keys).
    pub setup_mode: Option<bool>,
    /// Subject CNs of the certificates in each database.
    pub pk: Vec<String>,
    pub kek: Vec<String>,
    pub db: Vec<String>,
    /// SHA-256 of each certificate's DER, in the order of its list.
    pub pk_sha256: Vec<String>,
    pub kek_sha256: Vec<String>,
    pub db_sha256: Vec<String>,
    /// Image hashes allowed by `db`.
    pub db_hashes: usize,
    /// Revocations in `dbx` (hashes and certificates).
    pub dbx_entries: usize,
    /// shim's `SbatLevelRT` as text (its first line names the level's
    /// date), null when shim did not publish one.
    pub sbat_level: Option<String>,
    pub ca_2023_ready: Ca2023,
    /// What could not be read, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Whether the firmware can take Windows boot managers signed after the
/// 2011 certificates expire.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ca2023 {
    /// `ready`, `needs-update`, or `unknown` (setup mode, unreadable).
    pub verdict: String,
    /// One line for the admin: what is missing, what to do.
    pub why: String,
}

impl Inventory {
    /// The judgement from the databases.
    fn judge(&mut self, kek: &Database, db: &Database) {
        let missing: Vec<&str> = [(db, WINDOWS_CA_2023, "db"), (kek, KEK_CA_2023, "KEK")]
            .iter()
            .filter(|(d, cn, _)| !d.holds(cn))
            .map(|(_, cn, _)| *cn)
            .collect();
        self.ca_2023_ready = if self.setup_mode == Some(true) || self.pk.is_empty() {
            Ca2023 {
                verdict: "unknown".into(),
                why: "setup mode: no platform key enrolled, so Secure Boot enforces nothing; enrol the vendor's keys in the firmware setup".into(),
            }
        } else if self.kek.is_empty() && self.db.is_empty() {
            Ca2023 {
                verdict: "unknown".into(),
                why: "KEK and db could not be read".into(),
            }
        } else if missing.is_empty() {
            Ca2023 {
                verdict: "ready".into(),
                why: format!("{WINDOWS_CA_2023} in db and {KEK_CA_2023} in KEK"),
            }
        } else {
            Ca2023 {
                verdict: "needs-update".into(),
                why: format!(
                    "missing {}: apply Microsoft's Secure Boot certificate update (or the PC vendor's firmware update) once Windows boots",
                    missing.join(" and ")
                ),
            }
        };
    }
}

/// Reads one variable's data (without the attribute bytes).
fn read_var(efivars: &Path, name: &str, vendor: &str) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read;
    let p = efivars.join(format!("{name}-{vendor}"));
    let f = match std::fs::File::open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{name}: {e}")),
    };
    let mut bytes = Vec::new();
    f.take(MAX_VAR + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{name}: {e}"))?;
    if bytes.len() as u64 > MAX_VAR {
        return Err(format!("{name}: larger than {MAX_VAR} bytes"));
    }
    if bytes.len() < 4 {
        return Err(format!(
            "{name}: {} bytes, shorter than its attributes",
            bytes.len()
        ));
    }
    Ok(Some(bytes.split_off(4)))
}

/// The inventory of `<root>/sys/firmware/efi/efivars`; `None` on a BIOS
/// boot (no efivarfs).
pub fn read(root: &Path) -> Option<Inventory> {
    let efivars = root.join("sys/firmware/efi/efivars");
    if !efivars.is_dir() {
        return None;
    }
    let mut inv = Inventory::default();
    let flag = |name: &str, notes: &mut Vec<String>| match read_var(&efivars, name, GLOBAL) {
        Ok(Some(d)) if d.len() == 1 => Some(d[0] == 1),
        Ok(Some(d)) => {
            notes.push(format!("{name}: {} bytes, expected 1", d.len()));
            None
        }
        Ok(None) => None,
        Err(e) => {
            notes.push(e);
            None
        }
    };
    inv.enabled = flag("SecureBoot", &mut inv.notes);
    inv.setup_mode = flag("SetupMode", &mut inv.notes);
    let database = |name: &str, vendor: &str, notes: &mut Vec<String>| -> Database {
        match read_var(&efivars, name, vendor) {
            Ok(Some(d)) => {
                let db = parse_database(&d);
                if let Some(p) = &db.problem {
                    notes.push(format!("{name}: {p}"));
                }
                db
            }
            Ok(None) => Database::default(),
            Err(e) => {
                notes.push(e);
                Database::default()
            }
        }
    };
    let pk = database("PK", GLOBAL, &mut inv.notes);
    let kek = database("KEK", GLOBAL, &mut inv.notes);
    let db = database("db", IMAGE_SECURITY, &mut inv.notes);
    let dbx = database("dbx", IMAGE_SECURITY, &mut inv.notes);
    inv.pk = pk.subjects();
    inv.kek = kek.subjects();
    inv.db = db.subjects();
    inv.pk_sha256 = pk.fingerprints();
    inv.kek_sha256 = kek.fingerprints();
    inv.db_sha256 = db.fingerprints();
    inv.db_hashes = db
        .signatures
        .iter()
        .filter(|s| matches!(s, Signature::Sha256))
        .count();
    inv.dbx_entries = dbx.signatures.len();
    inv.sbat_level = match read_var(&efivars, "SbatLevelRT", SHIM_LOCK) {
        Ok(Some(d)) => Some(clean_sbat(&d)),
        Ok(None) => None,
        Err(e) => {
            inv.notes.push(e);
            None
        }
    };
    inv.judge(&kek, &db);
    Some(inv)
}

/// SBAT level text: printable lines up to the first NUL, bounded.
fn clean_sbat(d: &[u8]) -> String {
    let text = String::from_utf8_lossy(d.split(|&b| b == 0).next().unwrap_or_default());
    text.lines()
        .map(clean)
        .filter(|l| !l.is_empty())
        .take(64)
        .collect::<Vec<_>>()
        .join("\n")
}

/// One line for the screen.
pub fn summary(inv: &Inventory) -> String {
    let state = match (inv.enabled, inv.setup_mode) {
        (_, Some(true)) => "setup mode",
        (Some(true), _) => "on",
        (Some(false), _) => "off",
        (None, _) => "unknown",
    };
    format!(
        "firmware: Secure Boot {state}; KEK: {}; db: {}; dbx {} entries; CA 2023: {}",
        if inv.kek.is_empty() {
            "(none)".to_string()
        } else {
            inv.kek.join(", ")
        },
        if inv.db.is_empty() {
            "(none)".to_string()
        } else {
            inv.db.join(", ")
        },
        inv.dbx_entries,
        inv.ca_2023_ready.verdict
    )
}

#[cfg(test)]
mod tests;
