//! The BitLocker key files fleets actually have, turned into candidate
//! credentials per protector ID: a technician drops whatever export they
//! have on the stick and the rescue finds the key for the volume in front
//! of it.
//!
//! Read here:
//! - CSV exports. Headers are matched case-insensitively, ignoring spaces,
//!   `-` and `_`; fields may be quoted (RFC 4180, `""` escapes, line breaks
//!   inside quotes); `,`, `;` or tab separated (Excel in many locales
//!   writes `;`); UTF-8 with or without BOM, or UTF-16 with BOM.
//!   Columns recognised, and where the names come from:
//!   - CrowdStrike Falcon's `BitLockerKeys.csv`: `KeyID`, `RecoveryKey`
//!     (as the project's design notes record it).
//!   - Active Directory (`Get-ADObject -Filter {objectClass -eq
//!     'msFVE-RecoveryInformation'} | Export-Csv`): attributes
//!     `msFVE-RecoveryGuid` and `msFVE-RecoveryPassword` (Microsoft's
//!     BitLocker recovery documentation, "ms-FVE-RecoveryInformation"
//!     attributes). When the GUID column was exported as raw bytes
//!     (`System.Byte[]`), the object's `Name`/`cn`/`DistinguishedName`,
//!     `<date>{GUID}` by Microsoft's documented naming, still carries it.
//!   - Entra ID / Intune portal and Graph exports: `Key ID` / `BitLocker
//!     Key Id` / `Recovery key ID`, `Recovery key` / `BitLocker recovery
//!     key`, `Device` / `Device name`; Graph's bitlockerRecoveryKey
//!     resource calls them `id` and `key`. These names are collected from
//!     admin guides and the Graph resource, not from a file we hold; the
//!     matching is loose on purpose.
//!   - Community Graph scripts' CSVs (e.g. michevnew/PowerShell
//!     `GraphSDK_Bitlocker_report.ps1`): `BitLockerKeyId`,
//!     `BitLockerRecoveryKey`, `DeviceName`; its device report also has
//!     the device's own `Id`/`DeviceId` GUIDs, so the generic `id` column
//!     ranks below every specific key-ID column.
//!   - MBAM / Configuration Manager reports: `Recovery Key ID`, `Recovery
//!     Key`, `Computer Name` (from memory of the MBAM report columns,
//!     unverified here).
//! - The `.TXT` Windows saves ("BitLocker Recovery Key <GUID>.TXT"):
//!   UTF-16LE with BOM (UTF-8 accepted), an `Identifier:` and a `Recovery
//!   Key:` (labels are localised, so the text is scanned for GUIDs and
//!   48-digit passwords instead of relying on the English labels; the file
//!   name's GUID is the fallback).
//! - Startup key `.BEK` files (named after their protector GUID).
//!
//! Not here: unlocking ([`super::keys::unlock`] does), or any logging of
//! keys: errors and reports name files, lines and protector IDs only.

use super::keys::{unlock, PasswordKey, RecoveryPassword, StartupKey, UnlockError, Unlocked};
use super::metadata::Metadata;
use super::{Credential, Guid};
use anyhow::{ensure, Context, Result};
use std::fmt;
use std::path::Path;

/// Larger key files are not key files; refuse before reading them.
pub const MAX_KEY_FILE: u64 = 64 << 20;
/// Files looked at per directory scan.
const MAX_DIR_ENTRIES: usize = 10_000;

/// A protector ID as a key file gives it: the full GUID, or only the first
/// 8 hex digits (what the recovery screen shows, and what some people
/// write down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyId {
    Full(Guid),
    Short([u8; 4]),
}

impl KeyId {
    /// Whether this ID names `protector`.
    pub fn matches(&self, protector: &Guid) -> bool {
        match self {
            KeyId::Full(g) => g == protector,
            // Data1 is stored little-endian: the first 8 digits are bytes 3..0.
            KeyId::Short(s) => {
                let mut d1 = protector.0;
                d1[..4].reverse();
                d1[..4] == *s
            }
        }
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyId::Full(g) => write!(f, "{}", g.windows_form()),
            KeyId::Short(s) => write!(f, "{:02X}{:02X}{:02X}{:02X}", s[0], s[1], s[2], s[3]),
        }
    }
}

/// The secret of one record.
#[derive(Clone)]
pub enum KeyMaterial {
    RecoveryPassword(RecoveryPassword),
    StartupKey(StartupKey),
    /// A volume's password (data and To Go volumes), kept hashed only.
    Password(PasswordKey),
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyMaterial::RecoveryPassword(_) => f.write_str("RecoveryPassword(<redacted>)"),
            KeyMaterial::StartupKey(k) => write!(f, "StartupKey({})", k.key_id),
            KeyMaterial::Password(_) => f.write_str("Password(<redacted>)"),
        }
    }
}

/// One key found in a file.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// `None` when the file gave a key without an ID: tried on no volume
    /// automatically (it would cost a 2²⁰-round stretch per protector), but
    /// listed by [`KeyStore::without_id`].
    pub id: Option<KeyId>,
    pub device: Option<String>,
    pub material: KeyMaterial,
    /// File and line, for reports.
    pub source: String,
}

impl KeyRecord {
    pub fn credential(&self) -> Credential {
        match &self.material {
            KeyMaterial::RecoveryPassword(rp) => Credential::RecoveryPassword(rp.clone()),
            KeyMaterial::StartupKey(k) => Credential::StartupKey(k.clone()),
            KeyMaterial::Password(p) => Credential::Password(p.clone()),
        }
    }

    /// The rank in which records are tried: a startup key costs nothing,
    /// a password and a recovery password a key stretch each.
    pub fn cost(&self) -> u8 {
        match self.material {
            KeyMaterial::StartupKey(_) => 0,
            KeyMaterial::Password(_) => 1,
            KeyMaterial::RecoveryPassword(_) => 2,
        }
    }
}

/// A key file sealed to a passphrase, recognised by its age header and
/// kept encrypted until [`KeyStore::open_sealed`] is given the passphrase.
pub struct SealedFile {
    /// The file's name (shown to people, and `sealed:<name>` in sources).
    pub name: String,
    pub bytes: Vec<u8>,
}

impl fmt::Debug for SealedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedFile({}, {} bytes)", self.name, self.bytes.len())
    }
}

/// Keys gathered from any number of files.
#[derive(Debug, Default)]
pub struct KeyStore {
    pub records: Vec<KeyRecord>,
    /// What was skipped and why (file:line: reason), never with key text.
    pub rejected: Vec<String>,
    /// Sealed key files not opened yet.
    pub sealed: Vec<SealedFile>,
}

impl KeyStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every key a file offers for `protector` (all of them when several
    /// rows carry the same ID: exports keep old keys too).
    pub fn candidates(&self, protector: &Guid) -> Vec<&KeyRecord> {
        self.records
            .iter()
            .filter(|r| r.id.is_some_and(|id| id.matches(protector)))
            .collect()
    }

    /// Keys that came without any protector ID.
    pub fn without_id(&self) -> Vec<&KeyRecord> {
        self.records.iter().filter(|r| r.id.is_none()).collect()
    }

    /// Adds a volume's password (host mode's `--password-file`); it has no
    /// protector ID and is tried on every password protector.
    pub fn add_password(&mut self, password: &str, source: &str) {
        self.records.push(KeyRecord {
            id: None,
            device: None,
            material: KeyMaterial::Password(PasswordKey::new(password)),
            source: source.to_string(),
        });
    }

    /// Reads one file, choosing the format by content and name. Returns how
    /// many keys it added.
    pub fn add_file(&mut self, path: &Path) -> Result<usize> {
        let len = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        ensure!(
            len <= MAX_KEY_FILE,
            "{} is {len} bytes: too large to be a key file",
            path.display()
        );
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A sealed file is recognised by its header whatever its name, and
        // kept for the passphrase: never parsed as plain keys.
        if super::sealed::is_sealed(&bytes) {
            super::sealed::read_header(&bytes).with_context(|| format!("reading {name}"))?;
            self.sealed.push(SealedFile { name, bytes });
            return Ok(0);
        }
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".bek") {
            self.add_bek(&bytes, &name)?;
            return Ok(1);
        }
        let text = decode_text(&bytes);
        if lower.ends_with(".csv") {
            return self.add_csv(&text, &name);
        }
        Ok(self.add_recovery_text(&text, &name))
    }

    /// Opens every sealed file not opened yet with `passphrase` (scrypt
    /// work factor at most `max_log_n`) and adds their keys with the source
    /// `sealed:<file>:<line>`. Returns each file's outcome; the files that
    /// opened leave [`KeyStore::sealed`]. The plaintext is wiped after it
    /// is parsed.
    pub fn open_sealed(
        &mut self,
        passphrase: &str,
        max_log_n: u8,
    ) -> Vec<(String, std::result::Result<usize, super::sealed::SealError>)> {
        use super::sealed::{unseal, SealError};
        let mut out = Vec::new();
        for f in std::mem::take(&mut self.sealed) {
            let result = unseal(&f.bytes, passphrase, max_log_n).and_then(|plain| {
                self.add_unsealed(&plain, &f.name)
                    .map_err(|e| SealError::NoKeys(format!("{e:#}")))
            });
            if matches!(result, Err(SealError::WrongPassphrase)) {
                self.sealed.push(SealedFile {
                    name: f.name.clone(),
                    bytes: f.bytes,
                });
            }
            out.push((f.name, result));
        }
        out
    }

    /// What a sealed file held: a `.BEK` or a Windows `.TXT` by its inner
    /// name (the sealed name without `.age`), else a CSV export, else any
    /// text with GUIDs and recovery passwords.
    fn add_unsealed(&mut self, plain: &[u8], name: &str) -> Result<usize> {
        let source = format!("sealed:{name}");
        let lower = name.to_ascii_lowercase();
        let inner = lower.strip_suffix(".age").unwrap_or(&lower);
        if inner.ends_with(".bek") {
            self.add_bek(plain, &source)?;
            return Ok(1);
        }
        let text = zeroize::Zeroizing::new(decode_text(plain));
        let n = if inner.ends_with(".txt") {
            self.add_recovery_text(&text, &source)
        } else {
            match self.add_csv(&text, &source) {
                Ok(n) => n,
                Err(_) => self.add_recovery_text(&text, &source),
            }
        };
        ensure!(n > 0, "no BitLocker recovery key in it");
        Ok(n)
    }

    /// Reads every `.csv`, `.txt`, `.bek` and sealed `.age` file in `dir`
    /// (not recursive). Unreadable files are listed in `rejected`, not
    /// fatal.
    pub fn add_dir(&mut self, dir: &Path) -> Result<usize> {
        let mut added = 0;
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
        for e in entries.take(MAX_DIR_ENTRIES) {
            let Ok(e) = e else { continue };
            let path = e.path();
            let ext = path
                .extension()
                .map(|x| x.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            if !matches!(ext.as_str(), "csv" | "txt" | "bek" | "age") || !path.is_file() {
                continue;
            }
            match self.add_file(&path) {
                Ok(n) => added += n,
                Err(err) => self.rejected.push(format!("{}: {err:#}", path.display())),
            }
        }
        Ok(added)
    }

    /// A `.BEK` startup key file.
    pub fn add_bek(&mut self, bytes: &[u8], source: &str) -> Result<()> {
        let key = StartupKey::parse(bytes).with_context(|| format!("reading {source}"))?;
        self.records.push(KeyRecord {
            id: Some(KeyId::Full(key.key_id)),
            device: None,
            material: KeyMaterial::StartupKey(key),
            source: source.to_string(),
        });
        Ok(())
    }

    /// A CSV export with a header row. Returns the number of keys added;
    /// fails only when no header names a recovery key column.
    pub fn add_csv(&mut self, text: &str, source: &str) -> Result<usize> {
        let rows = parse_csv(text);
        let header_at = rows
            .iter()
            .position(|(_, r)| r.iter().any(|c| column_role(c) == Some(Role::Key)))
            .with_context(|| {
                format!("{source}: no recovery key column (looked for RecoveryKey, Recovery Key, msFVE-RecoveryPassword, ...)")
            })?;
        let header = &rows[header_at].1;
        // Columns of a role, most specific name first.
        let cols = |role: Role| -> Vec<usize> {
            let mut v: Vec<(usize, usize)> = header
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    column_role_ranked(c)
                        .filter(|(r, _)| *r == role)
                        .map(|(_, rank)| (rank, i))
                })
                .collect();
            v.sort_unstable();
            v.into_iter().map(|(_, i)| i).collect()
        };
        let (key_cols, id_cols, name_cols, device_cols) = (
            cols(Role::Key),
            cols(Role::Id),
            cols(Role::ObjectName),
            cols(Role::Device),
        );
        let mut added = 0;
        for (line, row) in &rows[header_at + 1..] {
            if row.iter().all(|c| c.trim().is_empty()) {
                continue;
            }
            let at = format!("{source}:{line}");
            let id = id_cols
                .iter()
                .chain(&name_cols)
                .filter_map(|&i| row.get(i))
                .find_map(|v| find_key_id(v));
            let device = device_cols
                .iter()
                .filter_map(|&i| row.get(i))
                .map(|v| v.trim().to_string())
                .find(|v| !v.is_empty());
            let mut found = false;
            for v in key_cols.iter().filter_map(|&i| row.get(i)) {
                if v.trim().is_empty() {
                    continue;
                }
                match RecoveryPassword::parse(v) {
                    Ok(rp) => {
                        self.records.push(KeyRecord {
                            id,
                            device: device.clone(),
                            material: KeyMaterial::RecoveryPassword(rp),
                            source: at.clone(),
                        });
                        added += 1;
                        found = true;
                    }
                    Err(e) => self.rejected.push(format!("{at}: {e}")),
                }
            }
            if !found
                && key_cols
                    .iter()
                    .all(|&i| row.get(i).is_none_or(|v| v.trim().is_empty()))
            {
                self.rejected
                    .push(format!("{at}: no recovery key in this row"));
            }
        }
        Ok(added)
    }

    /// Windows' saved recovery key text (or any text holding GUIDs and
    /// 48-digit recovery passwords). The identifier is the GUID after an
    /// `Identifier` label if any, else the first GUID in the text, else the
    /// one in the file name. Returns the number of keys added.
    pub fn add_recovery_text(&mut self, text: &str, source: &str) -> usize {
        let guids = find_guids(text);
        let labelled = text
            .lines()
            .enumerate()
            .find(|(_, l)| l.to_ascii_lowercase().contains("identifier:"))
            .and_then(|(i, _)| {
                text.lines()
                    .skip(i)
                    .take(4)
                    .find_map(|l| find_guids(l).into_iter().next())
            });
        let id = labelled
            .or_else(|| guids.first().copied())
            .or_else(|| find_guids(source).into_iter().next())
            .map(KeyId::Full);
        let mut added = 0;
        for (line, candidate) in find_recovery_passwords(text) {
            match RecoveryPassword::parse(&candidate) {
                Ok(rp) => {
                    self.records.push(KeyRecord {
                        id,
                        device: None,
                        material: KeyMaterial::RecoveryPassword(rp),
                        source: format!("{source}:{line}"),
                    });
                    added += 1;
                }
                Err(e) => self.rejected.push(format!("{source}:{line}: {e}")),
            }
        }
        if added == 0 {
            self.rejected
                .push(format!("{source}: no 48-digit recovery password found"));
        }
        added
    }
}

/// Opens the volume with whatever `store` holds for its protectors:
/// startup keys first (no stretch), then recovery passwords, every
/// candidate for each protector. `NoKeyForVolume` when nothing matches;
/// `WrongKey` naming the protectors tried when keys matched by ID but none
/// opened (an old key for a re-keyed volume, or a mistyped export).
pub fn unlock_from_store(meta: &Metadata, store: &KeyStore) -> Result<Unlocked, UnlockError> {
    let mut candidates: Vec<&KeyRecord> = meta
        .vmks()
        .flat_map(|v| store.candidates(&v.guid))
        .collect();
    if candidates.is_empty() {
        return Err(UnlockError::NoKeyForVolume {
            protectors: meta.vmks().map(|v| (v.guid, v.kind)).collect(),
        });
    }
    candidates.sort_by_key(|r| r.cost());
    let mut tried = Vec::new();
    let mut last = None;
    for record in candidates {
        match unlock(meta, &record.credential()) {
            Ok(u) => return Ok(u),
            Err(UnlockError::WrongKey { tried: t }) => tried.extend(t),
            // A recovery password listed under a startup key's ID, say.
            Err(e) => last = Some(e),
        }
    }
    tried.sort();
    tried.dedup();
    if tried.is_empty() {
        if let Some(e) = last {
            return Err(e);
        }
    }
    Err(UnlockError::WrongKey { tried })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Key,
    Id,
    /// An AD object name that embeds the recovery GUID: used when no ID
    /// column yields one.
    ObjectName,
    Device,
}

fn column_role(header: &str) -> Option<Role> {
    column_role_ranked(header).map(|(r, _)| r)
}

/// Header names per role, most specific first (the rank is the position).
const KEY_NAMES: &[&str] = &[
    "recoverykey",
    "recoverypassword",
    "msfverecoverypassword",
    "bitlockerrecoverykey",
    "bitlockerrecoverypassword",
    "numericalpassword",
    "bitlockerkey",
    "key",
];
const ID_NAMES: &[&str] = &[
    "keyid",
    "bitlockerkeyid",
    "recoverykeyid",
    "bitlockerrecoverykeyid",
    "keyprotectorid",
    "protectorid",
    "msfverecoveryguid",
    "recoveryguid",
    "recoverykeyidentifier",
    "passwordid",
    "identifier",
    "id",
];
const OBJECT_NAMES: &[&str] = &["name", "cn", "distinguishedname", "objectname"];
const DEVICE_NAMES: &[&str] = &[
    "device",
    "devicename",
    "computername",
    "computer",
    "hostname",
    "machinename",
    "displayname",
];

fn column_role_ranked(header: &str) -> Option<(Role, usize)> {
    let n: String = header
        .trim()
        .trim_start_matches('\u{feff}')
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '_' | '"' | '.'))
        .flat_map(char::to_lowercase)
        .collect();
    [
        (Role::Key, KEY_NAMES),
        (Role::Id, ID_NAMES),
        (Role::ObjectName, OBJECT_NAMES),
        (Role::Device, DEVICE_NAMES),
    ]
    .into_iter()
    .find_map(|(role, names)| names.iter().position(|x| *x == n).map(|rank| (role, rank)))
}

/// A GUID anywhere in `v`, else a lone 8-hex-digit short ID.
fn find_key_id(v: &str) -> Option<KeyId> {
    if let Some(g) = find_guids(v).into_iter().next() {
        return Some(KeyId::Full(g));
    }
    let t = v.trim().trim_matches(|c| c == '{' || c == '}');
    if t.len() == 8 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut s = [0u8; 4];
        for (i, b) in s.iter_mut().enumerate() {
            *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).ok()?;
        }
        return Some(KeyId::Short(s));
    }
    None
}

/// Every 8-4-4-4-12 hex GUID in `text`, in order.
fn find_guids(text: &str) -> Vec<Guid> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 36 <= b.len() {
        let cand = &b[i..i + 36];
        let shape = cand.iter().enumerate().all(|(j, &c)| {
            if matches!(j, 8 | 13 | 18 | 23) {
                c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
        let boundary = i == 0 || !b[i - 1].is_ascii_hexdigit();
        if shape && boundary {
            if let Some(g) = std::str::from_utf8(cand).ok().and_then(Guid::parse) {
                out.push(g);
                i += 36;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// Runs of 8 groups of 6 digits separated by `-` (or spaces) in `text`,
/// with their 1-based line numbers.
fn find_recovery_passwords(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let b = line.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if !b[i].is_ascii_digit() || (i > 0 && b[i - 1].is_ascii_digit()) {
                i += 1;
                continue;
            }
            // Try to read 8 groups from here.
            let mut j = i;
            let mut groups = 0;
            while groups < 8 {
                let start = j;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                if j - start != 6 {
                    break;
                }
                groups += 1;
                if groups < 8 && j < b.len() && (b[j] == b'-' || b[j] == b' ') {
                    j += 1;
                } else {
                    break;
                }
            }
            if groups == 8 && (j == b.len() || !b[j].is_ascii_digit()) {
                out.push((n + 1, line[i..j].to_string()));
                i = j;
            } else {
                i += 1;
            }
        }
    }
    out
}

/// Bytes of a text file to a String: UTF-16 by BOM (or by the zero bytes
/// of ASCII in UTF-16LE without one), else UTF-8 (lossy).
pub fn decode_text(bytes: &[u8]) -> String {
    let utf16 = |b: &[u8], le: bool| -> String {
        let units: Vec<u16> = b
            .chunks_exact(2)
            .map(|c| {
                if le {
                    u16::from_le_bytes([c[0], c[1]])
                } else {
                    u16::from_be_bytes([c[0], c[1]])
                }
            })
            .collect();
        String::from_utf16_lossy(&units)
    };
    if let Some(rest) = bytes.strip_prefix(&[0xff, 0xfe]) {
        return utf16(rest, true);
    }
    if let Some(rest) = bytes.strip_prefix(&[0xfe, 0xff]) {
        return utf16(rest, false);
    }
    if let Some(rest) = bytes.strip_prefix(&[0xef, 0xbb, 0xbf]) {
        return String::from_utf8_lossy(rest).into_owned();
    }
    let sample = &bytes[..bytes.len().min(256)];
    if sample.len() >= 4 && sample.iter().skip(1).step_by(2).all(|&b| b == 0) {
        return utf16(bytes, true);
    }
    String::from_utf8_lossy(bytes).into_owned()
}

/// RFC 4180 CSV with the separator guessed from the first line; rows
/// carry their 1-based starting line.
fn parse_csv(text: &str) -> Vec<(usize, Vec<String>)> {
    let first = text.lines().next().unwrap_or("");
    let sep = [',', ';', '\t']
        .into_iter()
        .max_by_key(|s| first.matches(*s).count())
        .unwrap_or(',');
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut line = 1;
    let mut row_line = 1;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push(c)
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.trim().is_empty() => {
                field.clear();
                quoted = true
            }
            c if c == sep => row.push(std::mem::take(&mut field)),
            '\r' => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                rows.push((row_line, std::mem::take(&mut row)));
                line += 1;
                row_line = line;
            }
            _ => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push((row_line, row));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    const RP: &str = "042647-302313-590458-071500-554323-116567-412181-516978";
    const RP2: &str = "235818-357951-253979-013365-241120-245575-342914-591910";
    const ID: &str = "3fd763f9-74c7-4e90-8fa2-1f6a2e2b4e0c";

    fn g() -> Guid {
        Guid::parse(ID).unwrap()
    }

    #[test]
    fn crowdstrike_csv() {
        let mut s = KeyStore::new();
        let csv = format!("KeyID,RecoveryKey\r\n{{{}}},{RP}\r\n", ID.to_uppercase());
        assert_eq!(s.add_csv(&csv, "BitLockerKeys.csv").unwrap(), 1);
        assert_eq!(s.candidates(&g()).len(), 1);
        assert_eq!(s.candidates(&g())[0].source, "BitLockerKeys.csv:2");
    }

    #[test]
    fn ad_export_with_quotes_byte_arrays_and_semicolons() {
        let csv = format!(
            "\u{feff}\"Name\";\"msFVE-RecoveryGuid\";\"msFVE-RecoveryPassword\"\n\
             \"2023-10-10T10:00:00-08:00{{{}}}\";\"System.Byte[]\";\"{RP}\"\n\
             \"2024-01-01T10:00:00-08:00{{{}}}\";\"System.Byte[]\";\"{RP2}\"\n",
            ID.to_uppercase(),
            ID
        );
        let mut s = KeyStore::new();
        assert_eq!(s.add_csv(&csv, "ad.csv").unwrap(), 2);
        assert_eq!(s.candidates(&g()).len(), 2, "both keys for one ID are kept");
    }

    #[test]
    fn entra_intune_export_and_short_ids() {
        let csv = format!(
            "Device,\"BitLocker Key Id\",\"Recovery key\",Volume\n\
             \"PC, lab 1\",{ID},\"{RP}\",OS\n\
             PC2,3FD763F9,{RP2},Data\n\
             PC3,,,\n\
             PC4,{ID},123456-bad,OS\n"
        );
        let mut s = KeyStore::new();
        assert_eq!(s.add_csv(&csv, "entra.csv").unwrap(), 2);
        let c = s.candidates(&g());
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].device.as_deref(), Some("PC, lab 1"));
        assert_eq!(c[1].id, Some(KeyId::Short([0x3f, 0xd7, 0x63, 0xf9])));
        assert_eq!(s.rejected.len(), 2, "{:?}", s.rejected);
        assert!(
            s.rejected.iter().all(|r| !r.contains("123456")),
            "never echo keys"
        );
        assert!(format!("{s:?}").contains("redacted"));
        assert!(!format!("{s:?}").contains("042647"));
    }

    #[test]
    fn graph_device_report_prefers_the_key_id_over_device_ids() {
        let csv = format!(
            "\"Id\",\"DeviceId\",\"DisplayName\",\"BitLockerKeyId\",\"BitLockerRecoveryKey\"\n\
             \"11111111-2222-3333-4444-555555555555\",\"66666666-7777-8888-9999-000000000000\",\"PC1\",\"{ID}\",\"{RP}\"\n"
        );
        let mut s = KeyStore::new();
        assert_eq!(s.add_csv(&csv, "report.csv").unwrap(), 1);
        assert_eq!(s.candidates(&g()).len(), 1);
        assert_eq!(s.candidates(&g())[0].device.as_deref(), Some("PC1"));
    }

    #[test]
    fn csv_without_key_column_fails() {
        assert!(KeyStore::new().add_csv("a,b\n1,2\n", "x.csv").is_err());
        assert!(KeyStore::new().add_csv("", "x.csv").is_err());
        assert!(KeyStore::new().add_csv("\"unterminated", "x.csv").is_err());
    }

    #[test]
    fn windows_txt_utf16_and_utf8() {
        let text = format!(
            "BitLocker Drive Encryption recovery key\r\n\r\nTo verify that this is the correct recovery key, compare the start of the following identifier with the identifier value displayed on your PC.\r\n\r\nIdentifier:\r\n\r\n\t{}\r\n\r\nIf the above identifier matches the one displayed by your PC, then use the following key to unlock your drive.\r\n\r\nRecovery Key:\r\n\r\n\t{RP}\r\n",
            ID.to_uppercase()
        );
        let mut utf16 = vec![0xff, 0xfe];
        utf16.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        let mut s = KeyStore::new();
        assert_eq!(s.add_recovery_text(&decode_text(&utf16), "k.TXT"), 1);
        assert_eq!(
            s.add_recovery_text(&decode_text(text.as_bytes()), "k.TXT"),
            1
        );
        assert_eq!(s.candidates(&g()).len(), 2);
        // No GUID inside: the file name's.
        let mut s = KeyStore::new();
        s.add_recovery_text(
            &format!("Recovery Key: {RP}"),
            &format!("BitLocker Recovery Key {}.TXT", ID.to_uppercase()),
        );
        assert_eq!(s.candidates(&g()).len(), 1);
    }

    #[test]
    fn scanners_on_hostile_text() {
        assert!(find_guids("").is_empty());
        assert!(find_recovery_passwords("1234567-").is_empty());
        assert!(find_recovery_passwords(&"1".repeat(10_000)).is_empty());
        assert_eq!(find_recovery_passwords(&format!("x{RP}y")).len(), 1);
        assert_eq!(find_recovery_passwords(&RP.replace('-', " ")).len(), 1);
        assert!(find_recovery_passwords(&format!("{RP}1")).is_empty());
        assert_eq!(decode_text(&[0xff]), "\u{fffd}");
        let _ = parse_csv("\"a\"\"b\",\"c\nd\"\n,,\n\"");
        assert_eq!(
            parse_csv("\"a\"\"b\",\"c\nd\"\n")[0].1,
            vec!["a\"b", "c\nd"]
        );
    }
}
