//! BitLocker, host-safe: read a volume's FVE metadata, turn a recovery
//! password / password / startup key / clear key into the volume's FVEK,
//! plan the device-mapper table that shows the plain volume, and (for tests
//! and host checks) decrypt or re-encrypt the volume in software.
//!
//! Everything here works on `impl Read + Seek` at a byte offset (a partition
//! inside a disk image, or a block device) and treats every byte it reads as
//! hostile: lengths are bounded, reads are capped, nothing panics on bad
//! input. It is NOT the part that talks to the kernel: creating the dm
//! device, mounting, and writing to the unlocked volume belong to the
//! rescue's thin kernel layer, which feeds [`dm::render_table`] to
//! device-mapper. Nothing here writes to the device it reads; the only
//! writer, [`soft::reencrypt_with_plain`], writes a new image file.
//!
//! Layout of the module:
//! - [`metadata`]: volume header, the three FVE metadata copies, datums.
//! - [`keys`]: recovery passwords, the SHA-256 stretch, AES-CCM unwrapping,
//!   `.BEK` files, the unlock flow and its typed errors.
//! - [`keyfile`]: the key files fleets keep (CSV exports, Windows' `.TXT`).
//! - [`sealed`]: key files encrypted to a passphrase (age v1, scrypt).
//! - [`dm`]: the device-mapper segments and table text, as cryptsetup lays
//!   BITLK out.
//! - [`soft`]: a software decryptor/encryptor following that plan.
//!
//! References (facts only, nothing copied): Joachim Metz, "BitLocker Drive
//! Encryption (BDE) format" (libbde's `documentation/`), cryptsetup's
//! `lib/bitlk/bitlk.c` (validation, KDF, dm layout), Linux `dm-crypt`
//! (`eboiv`, `elephant`, `iv_large_sectors`), and N. Ferguson, "AES-CBC +
//! Elephant diffuser" (Microsoft, 2006).

pub mod dm;
pub mod keyfile;
pub mod keys;
pub mod metadata;
pub mod sealed;
pub mod soft;

use std::fmt;

pub use keys::{
    unlock, Credential, PasswordKey, RecoveryPassword, StartupKey, UnlockError, Unlocked, VolumeKey,
};
pub use metadata::{read_metadata, EncryptionMethod, Metadata, ProtectorKind, Refusal};

/// Whether the rescue can open a volume, for the console and reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Mappable; these protectors can open it here (ask for one of them).
    Ready { usable: Vec<(Guid, ProtectorKind)> },
    /// Must not be mapped (conversion, encrypt-on-write, unknown format).
    Refused(Refusal),
    /// Mappable, but every protector needs this PC's TPM or a smart card:
    /// only a recovery password from the organisation's escrow helps.
    NoOfflineProtector {
        protectors: Vec<(Guid, ProtectorKind)>,
    },
}

impl std::fmt::Display for Readiness {
    /// Protector IDs as the recovery screen shows them: the first 8 hex
    /// digits, and the full GUID in braces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |p: &[(Guid, ProtectorKind)]| {
            p.iter()
                .map(|(g, k)| {
                    format!(
                        "{} key ID {} ({})",
                        k.name(),
                        g.short_id(),
                        g.windows_form()
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Readiness::Ready { usable } => write!(f, "can be unlocked with: {}", list(usable)),
            Readiness::Refused(r) => write!(f, "{r}"),
            Readiness::NoOfflineProtector { protectors } => write!(
                f,
                "no protector usable without this PC's TPM or a smart card ({}); find the recovery password in the organisation's key escrow (AD, Entra ID, Intune, MBAM)",
                list(protectors)
            ),
        }
    }
}

/// Judges a volume of `device_len` bytes whose metadata is `meta`.
pub fn assess(meta: &Metadata, device_len: u64) -> Readiness {
    if let Some(r) = meta.refusal_for_device(device_len) {
        return Readiness::Refused(r);
    }
    let usable: Vec<_> = meta
        .offline_protectors()
        .iter()
        .map(|v| (v.guid, v.kind))
        .collect();
    if usable.is_empty() {
        Readiness::NoOfflineProtector {
            protectors: meta.vmks().map(|v| (v.guid, v.kind)).collect(),
        }
    } else {
        Readiness::Ready { usable }
    }
}

/// A Microsoft GUID as BitLocker stores it: Data1..Data3 little-endian,
/// Data4 as bytes. Shown lowercase 8-4-4-4-12 like `manage-bde`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// From the 16 on-disk bytes.
    pub fn from_disk(b: &[u8]) -> Option<Guid> {
        let mut g = [0u8; 16];
        g.copy_from_slice(b.get(..16)?);
        Some(Guid(g))
    }

    /// Parses `8-4-4-4-12` hex, case-insensitive, braces optional,
    /// surrounding whitespace ignored.
    pub fn parse(s: &str) -> Option<Guid> {
        let s = s.trim();
        let s = s.strip_prefix('{').unwrap_or(s);
        let s = s.strip_suffix('}').unwrap_or(s);
        let parts: Vec<&str> = s.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if parts.len() != 5 || parts.iter().zip(lens).any(|(p, l)| p.len() != l) {
            return None;
        }
        let hex: String = parts.concat();
        let mut text = [0u8; 16];
        for (i, byte) in text.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        // Text order is big-endian per field; disk order swaps Data1..3.
        let mut g = text;
        g[0..4].reverse();
        g[4..6].reverse();
        g[6..8].reverse();
        Some(Guid(g))
    }

    /// What Windows' BitLocker recovery screen shows as "Key ID": the first
    /// 8 hex digits, uppercase.
    pub fn short_id(&self) -> String {
        self.to_string()[..8].to_ascii_uppercase()
    }

    /// The full GUID uppercase in braces, as the recovery screen and the
    /// `.TXT` file Windows saves show it.
    pub fn windows_form(&self) -> String {
        format!("{{{}}}", self.to_string().to_ascii_uppercase())
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
            u16::from_le_bytes([g[4], g[5]]),
            u16::from_le_bytes([g[6], g[7]]),
            g[8],
            g[9],
            g[10],
            g[11],
            g[12],
            g[13],
            g[14],
            g[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// Little-endian readers over an untrusted slice: `None` past the end.
pub(crate) fn le16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

pub(crate) fn le32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

pub(crate) fn le64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// UTF-16LE bytes to a String, stopping at the first NUL; lossy, since
/// these strings are only shown to people.
pub(crate) fn utf16le(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_round_trips_and_shows_like_windows() {
        let g = Guid::parse("{3FD763F9-74C7-4E90-8FA2-1F6A2E2B4E0C}").unwrap();
        assert_eq!(g.to_string(), "3fd763f9-74c7-4e90-8fa2-1f6a2e2b4e0c");
        assert_eq!(g.short_id(), "3FD763F9");
        assert_eq!(g.windows_form(), "{3FD763F9-74C7-4E90-8FA2-1F6A2E2B4E0C}");
        assert_eq!(g.0[0], 0xf9, "Data1 is little-endian on disk");
        assert_eq!(Guid::parse("3fd763f9-74c7-4e90-8fa2-1f6a2e2b4e0c"), Some(g));
        for bad in [
            "",
            "{}",
            "3fd763f9-74c7-4e90-8fa2",
            "3fd763f9-74c7-4e90-8fa2-1f6a2e2b4e0g",
            "3fd763f974c74e908fa21f6a2e2b4e0c",
            "3fd763f9-74c7-4e90-8fa2-1f6a2e2b4e0c0",
            "é3fd763f-74c7-4e90-8fa2-1f6a2e2b4e0c",
        ] {
            assert_eq!(Guid::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn le_readers_stop_at_the_end() {
        assert_eq!(le16(&[1], 0), None);
        assert_eq!(le32(&[1, 2, 3, 4], 1), None);
        assert_eq!(le64(&[0; 8], usize::MAX), None);
        assert_eq!(le16(&[1, 2], 0), Some(0x0201));
    }
}
