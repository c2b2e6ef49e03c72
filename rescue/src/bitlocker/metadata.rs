//! BitLocker on-disk metadata: the volume header (boot sector), the three
//! FVE metadata copies, and the tree of metadata entries ("datums") in the
//! copy that passes its CRC-32.
//!
//! This reads and checks; it does not decrypt. The second integrity check,
//! the AES-CCM-sealed SHA-256 of the whole metadata block, needs the VMK, so
//! [`crate::bitlocker::keys::unlock`] performs it with the
//! [`Metadata::block_sha256`] and [`Metadata::validation`] kept here.
//! Windows Vista (metadata version 1) volumes are recognised and refused,
//! not parsed.
//!
//! Structure references are to the BDE format document's sections
//! ("§ FVE metadata block header version 2" etc.) and, for the validation
//! block that document leaves open, to cryptsetup's `lib/bitlk/bitlk.c`.

use super::{le16, le32, le64, utf16le, Guid};
use anyhow::{anyhow, Context, Result};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use zeroize::Zeroizing;

/// Each FVE metadata copy owns a 64 KiB area on the volume (cryptsetup's
/// `BITLK_FVE_METADATA_SIZE`); the plain volume shows these areas as zeros.
pub const FVE_AREA_SIZE: u64 = 64 * 1024;
/// § FVE metadata block header version 2: 64 bytes.
const BLOCK_HEADER_LEN: usize = 64;
/// § FVE metadata header (version 1): 48 bytes, right after the block header.
const METADATA_HEADER_LEN: usize = 48;
/// § FVE metadata entry: size, entry type, value type, version (u16 each).
pub(crate) const DATUM_HEADER_LEN: usize = 8;
/// Validation block after the metadata (bitlk.c `bitlk_fve_metadata_validation`):
/// size u16, version u16, CRC-32 u32, then one AES-CCM datum of 8 + 72 bytes.
const VALIDATION_HEADER_LEN: usize = 8;
const VALIDATION_DATUM_LEN: usize = 80;
/// Datums nest (VMK → stretch key → AES-CCM); Windows uses at most three
/// levels. Deeper input is hostile.
const MAX_DEPTH: usize = 6;

/// Boot sector OEM IDs (§ Volume header, Windows 7 and later / To Go).
const SIGNATURE_FVE: &[u8; 8] = b"-FVE-FS-";
const SIGNATURE_TOGO: &[u8; 8] = b"MSWIN4.1";
/// Where the BitLocker identifier GUID and the three metadata offsets sit:
/// 160 (0xA0) in a `-FVE-FS-` header, 424 (0x1A8) in a To Go FAT header.
const IDENTIFIER_AT_FVE: usize = 160;
const IDENTIFIER_AT_TOGO: usize = 424;
/// Boot code jump: `EB 52 90` is Vista's (metadata version 1), `EB 58 90`
/// Windows 7 and later (bitlk.c `BITLK_BOOTCODE_V1`/`_V2`).
const BOOT_JUMP_VISTA: [u8; 3] = [0xeb, 0x52, 0x90];
const BOOT_JUMP_V2: [u8; 3] = [0xeb, 0x58, 0x90];
/// Identifier of an ordinary BitLocker volume {4967d63b-2e29-4ad8-8399-f6a339e3d001}.
const IDENTIFIER_NORMAL: [u8; 16] = [
    0x3b, 0xd6, 0x67, 0x49, 0x29, 0x2e, 0xd8, 0x4a, 0x83, 0x99, 0xf6, 0xa3, 0x39, 0xe3, 0xd0, 0x01,
];
/// Identifier of an encrypt-on-write volume {92a84d3b-dd80-4d0e-9e4e-b1e3284eaed8}
/// (bitlk.c `BITLK_GUID_EOW`): which sectors are encrypted is tracked in a
/// bitmap, so no linear mapping shows the plain volume.
pub(crate) const IDENTIFIER_EOW: [u8; 16] = [
    0x3b, 0x4d, 0xa8, 0x92, 0x80, 0xdd, 0x0e, 0x4d, 0x9e, 0x4e, 0xb1, 0xe3, 0x28, 0x4e, 0xae, 0xd8,
];
/// FVE block header states (offsets 12 and 14): 4 = fully encrypted and
/// steady. Anything else (seen: 1, 2, 5) is a conversion in progress or paused.
const STATE_NORMAL: u16 = 4;

/// § FVE metadata entry types.
pub const ENTRY_PROPERTY: u16 = 0x0000;
pub const ENTRY_VMK: u16 = 0x0002;
pub const ENTRY_FVEK: u16 = 0x0003;
pub const ENTRY_STARTUP_KEY: u16 = 0x0006;
pub const ENTRY_DESCRIPTION: u16 = 0x0007;
pub const ENTRY_VOLUME_HEADER: u16 = 0x000f;

/// § FVE metadata value types.
pub const VALUE_ERASED: u16 = 0x0000;
pub const VALUE_KEY: u16 = 0x0001;
pub const VALUE_STRING: u16 = 0x0002;
pub const VALUE_STRETCH_KEY: u16 = 0x0003;
pub const VALUE_USE_KEY: u16 = 0x0004;
pub const VALUE_AES_CCM: u16 = 0x0005;
pub const VALUE_TPM_KEY: u16 = 0x0006;
pub const VALUE_VALIDATION: u16 = 0x0007;
pub const VALUE_VMK: u16 = 0x0008;
pub const VALUE_EXTERNAL_KEY: u16 = 0x0009;
pub const VALUE_OFFSET_SIZE: u16 = 0x000f;
pub const VALUE_GUID: u16 = 0x0017;

/// How the volume's sectors are encrypted (§ FVE metadata header,
/// encryption methods; the low 16 bits of the field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncryptionMethod {
    /// 0x8000: Windows 7 default.
    AesCbc128Elephant,
    /// 0x8001
    AesCbc256Elephant,
    /// 0x8002: Windows 8/8.1 default.
    AesCbc128,
    /// 0x8003
    AesCbc256,
    /// 0x8004: Windows 10 1511 and later default.
    AesXts128,
    /// 0x8005
    AesXts256,
}

impl EncryptionMethod {
    pub fn from_raw(v: u16) -> Option<Self> {
        Some(match v {
            0x8000 => Self::AesCbc128Elephant,
            0x8001 => Self::AesCbc256Elephant,
            0x8002 => Self::AesCbc128,
            0x8003 => Self::AesCbc256,
            0x8004 => Self::AesXts128,
            0x8005 => Self::AesXts256,
            _ => return None,
        })
    }

    /// As `manage-bde -status` names it.
    pub fn name(self) -> &'static str {
        match self {
            Self::AesCbc128Elephant => "AES-CBC-128 with Elephant diffuser",
            Self::AesCbc256Elephant => "AES-CBC-256 with Elephant diffuser",
            Self::AesCbc128 => "AES-CBC-128",
            Self::AesCbc256 => "AES-CBC-256",
            Self::AesXts128 => "XTS-AES-128",
            Self::AesXts256 => "XTS-AES-256",
        }
    }

    /// The dm-crypt cipher spec (kernel ≥ 5.3 for eboiv, ≥ 5.6 for elephant).
    pub fn dm_cipher(self) -> &'static str {
        match self {
            Self::AesCbc128Elephant | Self::AesCbc256Elephant => "aes-cbc-elephant",
            Self::AesCbc128 | Self::AesCbc256 => "aes-cbc-eboiv",
            Self::AesXts128 | Self::AesXts256 => "aes-xts-plain64",
        }
    }

    /// AES key size of the sector cipher in bytes (one XTS half, the CBC key).
    pub fn aes_key_len(self) -> usize {
        match self {
            Self::AesCbc128Elephant | Self::AesCbc128 | Self::AesXts128 => 16,
            _ => 32,
        }
    }

    /// Length of the key dm-crypt takes: XTS = two AES keys; Elephant = the
    /// CBC key followed by the tweak (diffuser) key; plain CBC = one key.
    pub fn dm_key_len(self) -> usize {
        match self {
            Self::AesCbc128 | Self::AesCbc256 => self.aes_key_len(),
            _ => 2 * self.aes_key_len(),
        }
    }

    pub fn is_elephant(self) -> bool {
        matches!(self, Self::AesCbc128Elephant | Self::AesCbc256Elephant)
    }

    pub fn is_xts(self) -> bool {
        matches!(self, Self::AesXts128 | Self::AesXts256)
    }
}

/// What unlocks a VMK entry (§ FVE Volume Master Key, key protection
/// types). The value is a bit set: TPM 0x0100, startup key 0x0200, PIN
/// 0x0400; so TPM+startup key (0x0300) and TPM+PIN+startup key (0x0700)
/// follow from the pattern, though no corpus image has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtectorKind {
    /// 0x0000: the VMK's key is stored in clear (protection suspended).
    ClearKey,
    /// 0x0100
    Tpm,
    /// 0x0200: a `.BEK` file (USB startup key / external key).
    StartupKey,
    /// 0x0300
    TpmStartupKey,
    /// 0x0500
    TpmPin,
    /// 0x0700
    TpmPinStartupKey,
    /// 0x0800: the 48-digit recovery password.
    RecoveryPassword,
    /// 0x1000: smart card / public key (certificate).
    SmartCard,
    /// 0x2000: a password (data and To Go volumes).
    Password,
    Unknown(u16),
}

impl ProtectorKind {
    pub fn from_raw(v: u16) -> Self {
        match v {
            0x0000 => Self::ClearKey,
            0x0100 => Self::Tpm,
            0x0200 => Self::StartupKey,
            0x0300 => Self::TpmStartupKey,
            0x0500 => Self::TpmPin,
            0x0700 => Self::TpmPinStartupKey,
            0x0800 => Self::RecoveryPassword,
            0x1000 => Self::SmartCard,
            0x2000 => Self::Password,
            other => Self::Unknown(other),
        }
    }

    /// Short stable name, as reports use it.
    pub fn name(self) -> String {
        match self {
            Self::ClearKey => "clear-key".into(),
            Self::Tpm => "tpm".into(),
            Self::StartupKey => "startup-key".into(),
            Self::TpmStartupKey => "tpm-startup-key".into(),
            Self::TpmPin => "tpm-pin".into(),
            Self::TpmPinStartupKey => "tpm-pin-startup-key".into(),
            Self::RecoveryPassword => "recovery-password".into(),
            Self::SmartCard => "smart-card".into(),
            Self::Password => "password".into(),
            Self::Unknown(v) => format!("unknown-{v:#06x}"),
        }
    }

    /// Whether a technician can use this protector on another machine
    /// (no TPM, no smart card reader): the rescue's offline unlock.
    pub fn usable_offline(self) -> bool {
        matches!(
            self,
            Self::ClearKey | Self::StartupKey | Self::RecoveryPassword | Self::Password
        )
    }
}

/// Key bytes read from the metadata (a clear key) or a `.BEK` file: wiped
/// on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(pub(crate) Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(b: &[u8]) -> Self {
        SecretBytes(Zeroizing::new(b.to_vec()))
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} secret bytes>", self.0.len())
    }
}

/// § FVE AES-CCM encrypted key: nonce (FILETIME + counter, 12 bytes), then
/// the 16-byte MAC and the ciphertext (cryptsetup reads them in this order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AesCcm {
    pub nonce: [u8; 12],
    pub tag: [u8; 16],
    pub ciphertext: Vec<u8>,
}

impl AesCcm {
    fn parse(data: &[u8]) -> Result<Self> {
        let nonce = data
            .get(..12)
            .context("AES-CCM datum too short for its nonce")?;
        let tag = data
            .get(12..28)
            .context("AES-CCM datum too short for its MAC")?;
        let mut n = [0u8; 12];
        n.copy_from_slice(nonce);
        let mut t = [0u8; 16];
        t.copy_from_slice(tag);
        Ok(AesCcm {
            nonce: n,
            tag: t,
            ciphertext: data[28..].to_vec(),
        })
    }
}

/// One VMK entry (§ FVE Volume Master Key): a key protector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmkEntry {
    /// The protector's ID (`manage-bde -protectors -get`; the recovery
    /// screen's "Key ID" is [`Guid::short_id`]).
    pub guid: Guid,
    /// FILETIME of the last change.
    pub modified: u64,
    pub protection: u16,
    pub kind: ProtectorKind,
    /// Properties: string, stretch key, AES-CCM key, clear key, ...
    pub properties: Vec<Datum>,
}

impl VmkEntry {
    /// The optional name string ("DiskPassword", "ExternalKey", ...).
    pub fn name(&self) -> Option<&str> {
        self.properties.iter().find_map(|d| match &d.value {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// The salt of the stretch key (recovery password, password).
    pub fn stretch_salt(&self) -> Option<[u8; 16]> {
        self.properties.iter().find_map(|d| match &d.value {
            Value::StretchKey { salt, .. } => Some(*salt),
            _ => None,
        })
    }

    /// The VMK sealed with this protector's key: the entry's own AES-CCM
    /// property (not the one nested in the stretch key).
    pub fn sealed_vmk(&self) -> Option<&AesCcm> {
        self.properties.iter().find_map(|d| match &d.value {
            Value::AesCcm(c) => Some(c),
            _ => None,
        })
    }

    /// A clear-key protector keeps the key that opens its sealed VMK in clear.
    pub fn clear_key(&self) -> Option<&SecretBytes> {
        self.properties.iter().find_map(|d| match &d.value {
            Value::Key { key, .. } => Some(key),
            _ => None,
        })
    }
}

/// One metadata entry ("datum"): header plus the decoded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datum {
    pub entry_type: u16,
    pub value_type: u16,
    pub version: u16,
    pub value: Value,
}

/// A datum's value, by value type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Erased,
    /// § FVE key: encryption method, key bytes.
    Key {
        method: u32,
        key: SecretBytes,
    },
    String(String),
    /// § FVE Stretch encrypted key: method, 16-byte salt, nested datums.
    StretchKey {
        method: u32,
        salt: [u8; 16],
        nested: Vec<Datum>,
    },
    /// Method, then nested datums (seen with startup keys).
    UseKey {
        method: u32,
        nested: Vec<Datum>,
    },
    AesCcm(AesCcm),
    Vmk(VmkEntry),
    /// § FVE External Key: the startup key in a `.BEK` file.
    ExternalKey {
        guid: Guid,
        modified: u64,
        nested: Vec<Datum>,
    },
    OffsetSize {
        offset: u64,
        size: u64,
    },
    Guid(Guid),
    /// TPM-encoded keys, validation, timestamps, hints, unknown types: kept raw.
    Opaque(Vec<u8>),
}

/// Walks a run of datums. Stops at a zero size (padding), refuses sizes
/// below the header or past the end; nests at most [`MAX_DEPTH`] levels.
/// Every datum consumes at least its 8-byte header, so the walk ends.
pub(crate) fn parse_datums(mut b: &[u8], depth: usize) -> Result<Vec<Datum>> {
    anyhow::ensure!(
        depth <= MAX_DEPTH,
        "metadata entries nested deeper than {MAX_DEPTH} levels"
    );
    let mut out = Vec::new();
    let mut at = 0usize;
    while b.len() >= DATUM_HEADER_LEN {
        let size = le16(b, 0).unwrap_or(0) as usize;
        if size == 0 {
            break;
        }
        anyhow::ensure!(
            size >= DATUM_HEADER_LEN && size <= b.len(),
            "metadata entry at +{at} claims {size} bytes, {} left",
            b.len()
        );
        let d =
            parse_datum(&b[..size], depth).with_context(|| format!("metadata entry at +{at}"))?;
        out.push(d);
        b = &b[size..];
        at += size;
    }
    Ok(out)
}

fn parse_datum(b: &[u8], depth: usize) -> Result<Datum> {
    let entry_type = le16(b, 2).context("entry header")?;
    let value_type = le16(b, 4).context("entry header")?;
    let version = le16(b, 6).context("entry header")?;
    let data = &b[DATUM_HEADER_LEN..];
    let need = |n: usize, what: &str| -> Result<()> {
        anyhow::ensure!(
            data.len() >= n,
            "{what} entry has {} bytes, needs {n}",
            data.len()
        );
        Ok(())
    };
    let value = match value_type {
        VALUE_ERASED => Value::Erased,
        VALUE_KEY => {
            need(4, "key")?;
            Value::Key {
                method: le32(data, 0).unwrap_or(0),
                key: SecretBytes::new(&data[4..]),
            }
        }
        VALUE_STRING => Value::String(utf16le(data)),
        VALUE_STRETCH_KEY => {
            need(20, "stretch key")?;
            let mut salt = [0u8; 16];
            salt.copy_from_slice(&data[4..20]);
            Value::StretchKey {
                method: le32(data, 0).unwrap_or(0),
                salt,
                nested: parse_datums(&data[20..], depth + 1)?,
            }
        }
        VALUE_USE_KEY => {
            need(4, "use key")?;
            Value::UseKey {
                method: le32(data, 0).unwrap_or(0),
                nested: parse_datums(&data[4..], depth + 1)?,
            }
        }
        VALUE_AES_CCM => Value::AesCcm(AesCcm::parse(data)?),
        VALUE_VMK => {
            // GUID 16, FILETIME 8, unknown u16, protection u16, properties.
            need(28, "VMK")?;
            let protection = le16(data, 26).unwrap_or(0);
            Value::Vmk(VmkEntry {
                guid: Guid::from_disk(data).context("VMK GUID")?,
                modified: le64(data, 16).unwrap_or(0),
                protection,
                kind: ProtectorKind::from_raw(protection),
                properties: parse_datums(&data[28..], depth + 1)?,
            })
        }
        VALUE_EXTERNAL_KEY => {
            need(24, "external key")?;
            Value::ExternalKey {
                guid: Guid::from_disk(data).context("external key GUID")?,
                modified: le64(data, 16).unwrap_or(0),
                nested: parse_datums(&data[24..], depth + 1)?,
            }
        }
        VALUE_OFFSET_SIZE => {
            need(16, "offset and size")?;
            Value::OffsetSize {
                offset: le64(data, 0).unwrap_or(0),
                size: le64(data, 8).unwrap_or(0),
            }
        }
        VALUE_GUID => {
            need(16, "GUID")?;
            Value::Guid(Guid::from_disk(data).context("GUID")?)
        }
        _ => Value::Opaque(data.to_vec()),
    };
    Ok(Datum {
        entry_type,
        value_type,
        version,
        value,
    })
}

/// The validation block after a metadata copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    pub size: u16,
    pub version: u16,
    /// CRC-32 (IEEE, as zlib) of the whole metadata block: block header,
    /// metadata header and entries — checked while reading.
    pub crc32: u32,
    /// AES-CCM (VMK) sealed SHA-256 of the same bytes — checked on unlock.
    pub sealed_hash: Option<AesCcm>,
}

/// Why a volume must not be unlocked by the rescue (it would show wrong
/// data or race a conversion Windows will resume). A caller matches on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("BitLocker metadata version {0} is not supported (Windows Vista volumes are version 1; only version 2, Windows 7 and later, is); unlock it in Windows")]
    UnsupportedVersion(u16),
    #[error("this BitLocker volume is only partly encrypted ({encrypted} of {volume} bytes); let Windows finish or reverse the conversion first")]
    PartiallyEncrypted { encrypted: u64, volume: u64 },
    #[error("BitLocker encryption or decryption is in progress or paused (state {current}, next {next}); let Windows finish the conversion first")]
    ConversionInProgress { current: u16, next: u16 },
    #[error("this is an encrypt-on-write BitLocker volume (sectors are encrypted as they are written, tracked by a bitmap): it cannot be mapped linearly; unlock it in Windows")]
    EncryptOnWrite,
    #[error("unknown BitLocker volume identifier {0}: not supported")]
    UnknownVolumeType(Guid),
    #[error("unknown BitLocker encryption method {0:#06x}: not supported")]
    UnknownMethod(u16),
    #[error("BitLocker sector size {0} is not supported (512 or 4096)")]
    SectorSize(u32),
}

/// The state of one of the three metadata copies, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyState {
    Valid,
    /// Why it was skipped (bad signature, CRC mismatch, I/O ...).
    Invalid(String),
    /// Not examined because an earlier copy was valid.
    NotRead,
}

/// Everything the metadata says.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// Byte offset of the volume on the device this was read from.
    pub volume_offset: u64,
    /// BitLocker To Go (FAT boot sector, `MSWIN4.1`).
    pub togo: bool,
    /// FVE metadata block version (2 = Windows 7 and later).
    pub version: u16,
    /// The identifier in the boot sector (normal or encrypt-on-write).
    pub identifier: Guid,
    /// Raw encryption method field (low 16 bits used).
    pub method_raw: u32,
    pub method: Option<EncryptionMethod>,
    /// The BitLocker volume GUID (metadata header).
    pub volume_guid: Guid,
    /// Bytes per sector from the boot sector (0 read as 512).
    pub sector_size: u32,
    /// "Encrypted volume size" from the block header: bytes of the volume
    /// that are encrypted (less than the volume while converting).
    pub encrypted_size: u64,
    /// Conversion states from the block header (4/4 = steady).
    pub current_state: u16,
    pub next_state: u16,
    /// Where Windows keeps the encrypted copy of the original first sectors.
    pub volume_header_offset: u64,
    pub volume_header_size: u64,
    /// Byte offsets (relative to the volume) of the three metadata copies;
    /// each owns [`FVE_AREA_SIZE`] bytes.
    pub metadata_offsets: [u64; 3],
    /// Which copy was used (0..3) and what was found in each.
    pub used_copy: usize,
    pub copies: [CopyState; 3],
    pub description: Option<String>,
    /// FILETIME from the metadata header.
    pub created: u64,
    /// All top-level entries of the used copy.
    pub entries: Vec<Datum>,
    pub validation: Validation,
    /// SHA-256 of the validated block, compared on unlock with the sealed hash.
    pub block_sha256: [u8; 32],
}

impl Metadata {
    /// Every key protector.
    pub fn vmks(&self) -> impl Iterator<Item = &VmkEntry> {
        self.entries.iter().filter_map(|d| match &d.value {
            Value::Vmk(v) if d.entry_type == ENTRY_VMK => Some(v),
            _ => None,
        })
    }

    /// The FVEK sealed with the VMK.
    pub fn sealed_fvek(&self) -> Option<&AesCcm> {
        self.entries.iter().find_map(|d| match &d.value {
            Value::AesCcm(c) if d.entry_type == ENTRY_FVEK => Some(c),
            _ => None,
        })
    }

    /// Why the volume must not be unlocked, if it must not. A volume that
    /// passes may still have no protector usable offline.
    pub fn refusal(&self) -> Option<Refusal> {
        if self.version != 2 {
            return Some(Refusal::UnsupportedVersion(self.version));
        }
        if self.identifier.0 == IDENTIFIER_EOW {
            return Some(Refusal::EncryptOnWrite);
        }
        if self.identifier.0 != IDENTIFIER_NORMAL {
            return Some(Refusal::UnknownVolumeType(self.identifier));
        }
        if self.current_state != STATE_NORMAL || self.next_state != STATE_NORMAL {
            return Some(Refusal::ConversionInProgress {
                current: self.current_state,
                next: self.next_state,
            });
        }
        if self.method.is_none() {
            return Some(Refusal::UnknownMethod(self.method_raw as u16));
        }
        if self.sector_size != 512 && self.sector_size != 4096 {
            return Some(Refusal::SectorSize(self.sector_size));
        }
        None
    }

    /// [`Self::refusal`] plus the size check that needs the device size:
    /// an encrypted size short of the volume means a partial conversion.
    /// One 4 KiB sector of slack is allowed, because the BDE format notes
    /// volumes one sector shorter than their partition; a real partial
    /// conversion leaves far more (and changes the states as well).
    pub fn refusal_for_device(&self, device_len: u64) -> Option<Refusal> {
        self.refusal().or_else(|| {
            (self.encrypted_size.saturating_add(PARTIAL_SLACK) < device_len).then_some(
                Refusal::PartiallyEncrypted {
                    encrypted: self.encrypted_size,
                    volume: device_len,
                },
            )
        })
    }

    /// Protectors a technician can use here (no TPM, no smart card).
    pub fn offline_protectors(&self) -> Vec<&VmkEntry> {
        self.vmks().filter(|v| v.kind.usable_offline()).collect()
    }
}

/// See [`Metadata::refusal_for_device`].
const PARTIAL_SLACK: u64 = 4096;

fn read_exact_at(dev: &mut (impl Read + Seek), at: u64, buf: &mut [u8]) -> Result<()> {
    dev.seek(SeekFrom::Start(at))
        .with_context(|| format!("seeking to byte {at}"))?;
    dev.read_exact(buf)
        .with_context(|| format!("reading {} bytes at byte {at}", buf.len()))
}

/// Reads and checks the BitLocker metadata of the volume at `offset` on
/// `dev`. Tries the three copies in order and uses the first whose CRC-32
/// matches and which sits where it says it sits. Fails (anyhow) when the
/// boot sector is not BitLocker or no copy is valid; a Vista volume fails
/// with a [`Refusal`] inside the error (`err.downcast_ref::<Refusal>()`).
/// A parsed volume may still be refused: see [`Metadata::refusal`].
pub fn read_metadata(dev: &mut (impl Read + Seek), offset: u64) -> Result<Metadata> {
    let mut boot = [0u8; 512];
    read_exact_at(dev, offset, &mut boot).context("reading the volume's boot sector")?;
    let togo = match &boot[3..11] {
        s if s == SIGNATURE_FVE => false,
        s if s == SIGNATURE_TOGO => true,
        _ => anyhow::bail!(
            "not a BitLocker volume: no -FVE-FS- or MSWIN4.1 signature in the boot sector"
        ),
    };
    if boot[..3] == BOOT_JUMP_VISTA && !togo {
        return Err(anyhow::Error::new(Refusal::UnsupportedVersion(1)));
    }
    anyhow::ensure!(
        boot[..3] == BOOT_JUMP_V2,
        "unknown BitLocker boot code {:02x?}: not a Windows 7 or later BitLocker volume",
        &boot[..3]
    );
    let mut sector_size = u32::from(le16(&boot, 11).unwrap_or(0));
    if sector_size == 0 {
        sector_size = 512;
    }
    let id_at = if togo {
        IDENTIFIER_AT_TOGO
    } else {
        IDENTIFIER_AT_FVE
    };
    let identifier = Guid::from_disk(&boot[id_at..]).context("identifier")?;
    let mut offsets = [0u64; 3];
    for (i, o) in offsets.iter_mut().enumerate() {
        *o = le64(&boot, id_at + 16 + 8 * i).context("metadata offset")?;
    }

    let mut copies = [CopyState::NotRead, CopyState::NotRead, CopyState::NotRead];
    let mut versions_seen = Vec::new();
    for i in 0..3 {
        match read_copy(dev, offset, offsets[i], i, &mut versions_seen) {
            Ok(block) => {
                copies[i] = CopyState::Valid;
                return finish(block, offset, togo, identifier, sector_size, i, copies);
            }
            Err(e) => copies[i] = CopyState::Invalid(format!("{e:#}")),
        }
    }
    if let Some(&v) = versions_seen.iter().find(|&&v| v != 2) {
        return Err(anyhow::Error::new(Refusal::UnsupportedVersion(v)));
    }
    let why: Vec<String> = copies
        .iter()
        .enumerate()
        .map(|(i, c)| match c {
            CopyState::Invalid(e) => format!("copy {} at +{}: {e}", i + 1, offsets[i]),
            _ => String::new(),
        })
        .collect();
    Err(anyhow!(
        "no valid BitLocker metadata copy ({}); the volume's metadata is damaged: try Windows' repair-bde with the recovery password",
        why.join("; ")
    ))
}

/// One validated metadata block: its bytes (block header + metadata header
/// + entries) and the validation block after it.
struct Block {
    bytes: Vec<u8>,
    validation: Validation,
}

fn read_copy(
    dev: &mut (impl Read + Seek),
    volume_offset: u64,
    rel: u64,
    index: usize,
    versions_seen: &mut Vec<u16>,
) -> Result<Block> {
    let at = volume_offset
        .checked_add(rel)
        .context("metadata offset overflows")?;
    // Read the whole 64 KiB area once: the CRC, the hash and the parse all
    // see the same bytes (no double fetch from a device that may change).
    let mut area = vec![0u8; FVE_AREA_SIZE as usize];
    read_exact_at(dev, at, &mut area).context("reading the metadata area")?;
    anyhow::ensure!(&area[..8] == SIGNATURE_FVE, "no -FVE-FS- signature");
    let version = le16(&area, 10).unwrap_or(0);
    versions_seen.push(version);
    anyhow::ensure!(version == 2, "metadata block version {version}, expected 2");
    // Block size in 16-byte units (offset 8; "unknown (size)" in the BDE
    // document, used this way by cryptsetup).
    let block_len = usize::from(le16(&area, 8).unwrap_or(0)) << 4;
    anyhow::ensure!(
        block_len >= BLOCK_HEADER_LEN + METADATA_HEADER_LEN
            && block_len + VALIDATION_HEADER_LEN <= area.len(),
        "metadata block size {block_len} out of range"
    );
    let v = &area[block_len..];
    let validation_size = le16(v, 0).unwrap_or(0);
    let validation_version = le16(v, 2).unwrap_or(0);
    let crc = le32(v, 4).unwrap_or(0);
    anyhow::ensure!(
        validation_size >= VALIDATION_HEADER_LEN as u16 && validation_version <= 2,
        "validation block size {validation_size} / version {validation_version} invalid"
    );
    let computed = crc32fast::hash(&area[..block_len]);
    anyhow::ensure!(
        computed == crc,
        "CRC-32 mismatch (stored {crc:08x}, computed {computed:08x})"
    );
    // The sealed SHA-256 datum (bitlk.c: size 80, role 0, AES-CCM type 5).
    let sealed_hash = (usize::from(validation_size)
        >= VALIDATION_HEADER_LEN + VALIDATION_DATUM_LEN)
        .then(|| &v[VALIDATION_HEADER_LEN..VALIDATION_HEADER_LEN + VALIDATION_DATUM_LEN])
        .filter(|d| {
            le16(d, 0) == Some(VALIDATION_DATUM_LEN as u16)
                && le16(d, 2) == Some(0)
                && le16(d, 4) == Some(VALUE_AES_CCM)
        })
        .and_then(|d| AesCcm::parse(&d[DATUM_HEADER_LEN..]).ok());
    // The copy must name its own place in the list it carries.
    let own = le64(&area, 32 + 8 * index).unwrap_or(u64::MAX);
    anyhow::ensure!(
        own == rel,
        "copy says it lives at +{own}, boot sector says +{rel}"
    );
    area.truncate(block_len);
    Ok(Block {
        bytes: area,
        validation: Validation {
            size: validation_size,
            version: validation_version,
            crc32: crc,
            sealed_hash,
        },
    })
}

fn finish(
    block: Block,
    volume_offset: u64,
    togo: bool,
    identifier: Guid,
    sector_size: u32,
    used_copy: usize,
    copies: [CopyState; 3],
) -> Result<Metadata> {
    let b = &block.bytes;
    let current_state = le16(b, 12).unwrap_or(0);
    let next_state = le16(b, 14).unwrap_or(0);
    let encrypted_size = le64(b, 16).unwrap_or(0);
    let header_sectors = le32(b, 28).unwrap_or(0);
    let mut metadata_offsets = [0u64; 3];
    for (i, o) in metadata_offsets.iter_mut().enumerate() {
        *o = le64(b, 32 + 8 * i).unwrap_or(0);
    }
    let header_offset_field = le64(b, 56).unwrap_or(0);
    // § FVE metadata header (version 1) at 64.
    let h = &b[BLOCK_HEADER_LEN..];
    let metadata_size = le32(h, 0).unwrap_or(0) as usize;
    let header_version = le32(h, 4).unwrap_or(0);
    let header_size = le32(h, 8).unwrap_or(0) as usize;
    anyhow::ensure!(
        header_version == 1 && header_size == METADATA_HEADER_LEN,
        "metadata header version {header_version} / size {header_size}, expected 1 / 48"
    );
    anyhow::ensure!(
        metadata_size >= METADATA_HEADER_LEN && BLOCK_HEADER_LEN + metadata_size <= b.len(),
        "metadata size {metadata_size} does not fit its {} byte block",
        b.len()
    );
    let volume_guid = Guid::from_disk(&h[16..]).context("volume GUID")?;
    let method_raw = le32(h, 36).unwrap_or(0);
    let created = le64(h, 40).unwrap_or(0);
    let entries = parse_datums(&h[METADATA_HEADER_LEN..metadata_size], 0)
        .context("parsing the metadata entries")?;

    let mut description = None;
    let mut header_place = None;
    for d in &entries {
        match (&d.value, d.entry_type) {
            (Value::String(s), ENTRY_DESCRIPTION) if description.is_none() => {
                description = Some(s.clone())
            }
            (Value::OffsetSize { offset, size }, ENTRY_VOLUME_HEADER) => {
                header_place = Some((*offset, *size))
            }
            _ => {}
        }
    }
    // Later Windows 10 builds drop the volume header entry: then the block
    // header's offset and sector count say it (§ Virtual sectors, Windows 10).
    let (volume_header_offset, volume_header_size) = header_place.unwrap_or((
        header_offset_field,
        u64::from(header_sectors) * u64::from(sector_size),
    ));
    let block_sha256: [u8; 32] = Sha256::digest(b).into();
    Ok(Metadata {
        volume_offset,
        togo,
        version: le16(b, 10).unwrap_or(0),
        identifier,
        method_raw,
        method: EncryptionMethod::from_raw(method_raw as u16),
        volume_guid,
        sector_size,
        encrypted_size,
        current_state,
        next_state,
        volume_header_offset,
        volume_header_size,
        metadata_offsets,
        used_copy,
        copies,
        description,
        created,
        entries,
        validation: block.validation,
        block_sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datum(entry: u16, value: u16, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((data.len() + 8) as u16).to_le_bytes());
        v.extend_from_slice(&entry.to_le_bytes());
        v.extend_from_slice(&value.to_le_bytes());
        v.extend_from_slice(&1u16.to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn datums_parse_nested_vmk() {
        let mut ccm = vec![7u8; 12];
        ccm.extend_from_slice(&[9u8; 16]);
        ccm.extend_from_slice(&[1u8; 44]);
        let mut stretch = 0x1000u32.to_le_bytes().to_vec();
        stretch.extend_from_slice(&[5u8; 16]);
        stretch.extend(datum(0, VALUE_AES_CCM, &ccm));
        let mut vmk = vec![0xaau8; 16];
        vmk.extend_from_slice(&[0u8; 8]);
        vmk.extend_from_slice(&[0, 0, 0x00, 0x08]);
        vmk.extend(datum(
            0,
            VALUE_STRING,
            &"DiskPassword\0"
                .encode_utf16()
                .flat_map(|u| u.to_le_bytes())
                .collect::<Vec<_>>(),
        ));
        vmk.extend(datum(0, VALUE_STRETCH_KEY, &stretch));
        vmk.extend(datum(0, VALUE_AES_CCM, &ccm));
        let all = datum(ENTRY_VMK, VALUE_VMK, &vmk);
        let d = parse_datums(&all, 0).unwrap();
        let Value::Vmk(v) = &d[0].value else { panic!() };
        assert_eq!(v.kind, ProtectorKind::RecoveryPassword);
        assert_eq!(v.name(), Some("DiskPassword"));
        assert_eq!(v.stretch_salt(), Some([5u8; 16]));
        assert_eq!(v.sealed_vmk().unwrap().ciphertext.len(), 44);
    }

    #[test]
    fn hostile_datums_fail_cleanly() {
        // Size past the end.
        let mut b = datum(0, VALUE_KEY, &[0u8; 8]);
        b[0] = 0xff;
        assert!(parse_datums(&b, 0).is_err());
        // Size below the header (would loop forever if accepted).
        let b = [4u8, 0, 0, 0, 1, 0, 1, 0, 0, 0];
        assert!(parse_datums(&b, 0).is_err());
        // Truncated typed values.
        for vt in [
            VALUE_KEY,
            VALUE_STRETCH_KEY,
            VALUE_AES_CCM,
            VALUE_VMK,
            VALUE_EXTERNAL_KEY,
            VALUE_OFFSET_SIZE,
            VALUE_GUID,
            VALUE_USE_KEY,
        ] {
            assert!(parse_datums(&datum(0, vt, &[1, 2]), 0).is_err(), "{vt}");
        }
        // Zero size ends the run (padding), a short tail is ignored.
        assert!(parse_datums(&[0u8; 20], 0).unwrap().is_empty());
        assert!(parse_datums(&[1u8; 5], 0).unwrap().is_empty());
        // Deep nesting: stretch keys inside stretch keys.
        let mut inner = datum(0, VALUE_ERASED, &[]);
        for _ in 0..20 {
            let mut s = vec![0u8; 20];
            s.extend(inner);
            inner = datum(0, VALUE_STRETCH_KEY, &s);
        }
        assert!(parse_datums(&inner, 0).is_err());
        // Garbage of every length never panics.
        let mut x = 12345u32;
        for len in 0..400 {
            let g: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1103515245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            let _ = parse_datums(&g, 0);
        }
    }

    #[test]
    fn boot_sectors_that_are_not_bitlocker() {
        let mut c = std::io::Cursor::new(vec![0u8; 512]);
        assert!(read_metadata(&mut c, 0).is_err());
        let mut c = std::io::Cursor::new(vec![0u8; 100]);
        assert!(read_metadata(&mut c, 0).is_err(), "truncated device");
        let mut boot = vec![0u8; 512];
        boot[..3].copy_from_slice(&BOOT_JUMP_VISTA);
        boot[3..11].copy_from_slice(SIGNATURE_FVE);
        let err = read_metadata(&mut std::io::Cursor::new(boot.clone()), 0).unwrap_err();
        assert_eq!(
            err.downcast_ref::<Refusal>(),
            Some(&Refusal::UnsupportedVersion(1))
        );
        // Offsets pointing past the end, or at u64::MAX.
        boot[..3].copy_from_slice(&BOOT_JUMP_V2);
        for (i, o) in [u64::MAX, 1 << 40, 0].iter().enumerate() {
            boot[176 + 8 * i..184 + 8 * i].copy_from_slice(&o.to_le_bytes());
        }
        let err = read_metadata(&mut std::io::Cursor::new(boot), 0).unwrap_err();
        assert!(
            format!("{err:#}").contains("no valid BitLocker metadata copy"),
            "{err:#}"
        );
    }
}
