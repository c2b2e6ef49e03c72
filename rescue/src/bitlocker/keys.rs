//! BitLocker keys: from what a technician has (recovery password, password,
//! startup-key `.BEK` file, or nothing for a suspended volume's clear key)
//! to the volume's sector key (FVEK), checking every AES-CCM tag on the way
//! and the metadata's sealed SHA-256 once the VMK is known.
//!
//! Chain (BDE format § Keys; cryptsetup `bitlk.c`):
//! credential → protector key (32 bytes; for passwords the 2²⁰-round
//! salted SHA-256 stretch) → AES-CCM unseal the protector's VMK → AES-CCM
//! unseal the metadata hash and the FVEK with the VMK.
//!
//! This is NOT where a volume is judged safe to map ([`super::dm::plan`]
//! refuses conversions and encrypt-on-write), and it never prints a key:
//! every key type zeroizes on drop and has a redacted `Debug`.

use super::metadata::{
    parse_datums, AesCcm, Metadata, ProtectorKind, SecretBytes, Value, VmkEntry, ENTRY_STARTUP_KEY,
    VALUE_EXTERNAL_KEY,
};
use super::{le16, le32, EncryptionMethod, Guid};
use aes::Aes256;
use ccm::aead::{AeadInPlace, KeyInit};
use ccm::consts::{U12, U16};
use sha2::digest::generic_array::GenericArray;
use sha2::{Digest, Sha256};
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// AES-256-CCM with a 16-byte tag and a 12-byte nonce: how BitLocker seals
/// every key in its metadata (BDE format § AES-CCM).
type BitlockerCcm = ccm::Ccm<Aes256, U16, U12>;

/// Rounds of the key stretch (BDE format § Recovery key: 0x100000).
pub const STRETCH_ROUNDS: u64 = 0x10_0000;

/// Why unlocking failed, for a caller to match on.
#[derive(Debug, thiserror::Error)]
pub enum UnlockError {
    /// The key was tried against every protector of its kind and no AES-CCM
    /// tag matched.
    #[error("wrong key: it opens none of {}", show_ids(tried))]
    WrongKey { tried: Vec<Guid> },
    /// The volume has no protector this credential can open.
    #[error(
        "this volume has no {wanted} protector; it has: {}",
        show_protectors(available)
    )]
    NoProtector {
        wanted: &'static str,
        available: Vec<(Guid, ProtectorKind)>,
    },
    /// The `.BEK` file belongs to another protector or volume.
    #[error("the startup key file is for key ID {} ({}), which this volume does not have", .key_id.short_id(), .key_id.windows_form())]
    StartupKeyNotForThisVolume { key_id: Guid },
    /// A recovery password that is not 48 valid digits.
    #[error("not a valid recovery password: {0}")]
    BadRecoveryPassword(String),
    /// A file that is not a BitLocker startup key.
    #[error("not a valid BitLocker startup key (.BEK) file: {0}")]
    BadStartupKey(String),
    /// The VMK opened but the metadata's sealed hash does not match: the
    /// metadata was altered (or is of a kind we do not know).
    #[error("BitLocker metadata failed its integrity check after unlocking ({0}); do not trust this volume's metadata")]
    Integrity(String),
    /// Key files were given, but none names a protector of this volume.
    #[error(
        "no key in the key files is for this volume; its protectors are: {}",
        show_protectors(protectors)
    )]
    NoKeyForVolume {
        protectors: Vec<(Guid, ProtectorKind)>,
    },
    /// A key opened but what it unsealed is malformed.
    #[error("malformed BitLocker key data: {0}")]
    Malformed(String),
}

fn show_ids(ids: &[Guid]) -> String {
    if ids.is_empty() {
        return "the protectors".into();
    }
    ids.iter()
        .map(|g| format!("key ID {} ({})", g.short_id(), g.windows_form()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn show_protectors(p: &[(Guid, ProtectorKind)]) -> String {
    if p.is_empty() {
        return "no protectors at all".into();
    }
    p.iter()
        .map(|(g, k)| {
            let note = if k.usable_offline() {
                ""
            } else {
                " (needs this PC's TPM or a smart card: not usable here)"
            };
            format!(
                "{} key ID {} ({}){note}",
                k.name(),
                g.short_id(),
                g.windows_form()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A parsed 48-digit recovery password: the 16-byte key made of the eight
/// 16-bit quotients (group / 11), little-endian.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct RecoveryPassword {
    key: [u8; 16],
}

impl fmt::Debug for RecoveryPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryPassword(<redacted>)")
    }
}

/// What is wrong with one 6-digit group while it is being typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupCheck {
    /// Fewer than 6 digits so far (no verdict yet).
    Incomplete,
    /// Six digits, divisible by 11, quotient < 65536.
    Valid,
    /// Not divisible by 11: a typo (Windows' recovery screen rejects it too).
    NotMultipleOf11,
    /// Quotient 65536 or more (the group is above 720885).
    TooLarge,
    /// A character that is not a digit, or more than 6 digits.
    Invalid,
}

/// Checks one group as typed (usable per keystroke).
pub fn check_group(group: &str) -> GroupCheck {
    if !group.bytes().all(|c| c.is_ascii_digit()) || group.len() > 6 {
        return GroupCheck::Invalid;
    }
    if group.len() < 6 {
        return GroupCheck::Incomplete;
    }
    let n: u32 = group.parse().unwrap_or(u32::MAX);
    if !n.is_multiple_of(11) {
        GroupCheck::NotMultipleOf11
    } else if n / 11 > 0xffff {
        GroupCheck::TooLarge
    } else {
        GroupCheck::Valid
    }
}

impl RecoveryPassword {
    /// Accepts 48 digits in 8 groups, separated by dashes, spaces, or
    /// nothing; surrounding whitespace is ignored. The error names the
    /// first bad group (1-based) but never echoes the digits.
    pub fn parse(text: &str) -> Result<Self, UnlockError> {
        let digits: Zeroizing<String> = Zeroizing::new(
            text.trim()
                .chars()
                .filter(|c| *c != '-' && !c.is_whitespace())
                .collect(),
        );
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(UnlockError::BadRecoveryPassword(
                "only digits, dashes and spaces are allowed".into(),
            ));
        }
        if digits.len() != 48 {
            return Err(UnlockError::BadRecoveryPassword(format!(
                "{} digits, expected 48 (8 groups of 6)",
                digits.len()
            )));
        }
        let mut key = [0u8; 16];
        for i in 0..8 {
            let group = &digits[6 * i..6 * i + 6];
            match check_group(group) {
                GroupCheck::Valid => {}
                GroupCheck::TooLarge => {
                    return Err(UnlockError::BadRecoveryPassword(format!(
                        "group {} is too large (each group is at most 720885)",
                        i + 1
                    )))
                }
                _ => {
                    return Err(UnlockError::BadRecoveryPassword(format!(
                        "group {} is not a multiple of 11 (typo?)",
                        i + 1
                    )))
                }
            }
            let q = (group.parse::<u32>().unwrap_or(0) / 11) as u16;
            key[2 * i..2 * i + 2].copy_from_slice(&q.to_le_bytes());
        }
        Ok(RecoveryPassword { key })
    }

    /// The 48 digits again, dash-separated (for `defib keys seal`, which
    /// writes them into the sealed plaintext). Secret: wiped on drop.
    pub fn digits(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(55));
        for (i, q) in self.key.chunks_exact(2).enumerate() {
            use std::fmt::Write;
            let group = u32::from(u16::from_le_bytes([q[0], q[1]])) * 11;
            let _ = write!(s, "{}{group:06}", if i == 0 { "" } else { "-" });
        }
        s
    }

    /// The 32-byte key that opens this recovery password's VMK, for the
    /// protector's salt: SHA-256 of the 16 bytes, then the stretch.
    pub fn protector_key(&self, salt: &[u8; 16]) -> ProtectorKey {
        let initial = Zeroizing::new(<[u8; 32]>::from(Sha256::digest(self.key)));
        ProtectorKey(stretch(&initial, salt, STRETCH_ROUNDS))
    }
}

/// A password (data and To Go volumes): SHA-256(SHA-256(UTF-16LE)), kept
/// in that form only.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PasswordKey {
    initial: [u8; 32],
}

impl fmt::Debug for PasswordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordKey(<redacted>)")
    }
}

impl PasswordKey {
    /// Windows hashes the UTF-16LE code units without a terminator (BDE
    /// format § User key); Rust's `encode_utf16` gives the same units for
    /// any Unicode password (cryptsetup got "£" wrong until 2025).
    pub fn new(password: &str) -> Self {
        let utf16: Zeroizing<Vec<u8>> =
            Zeroizing::new(password.encode_utf16().flat_map(u16::to_le_bytes).collect());
        let once = Zeroizing::new(<[u8; 32]>::from(Sha256::digest(&*utf16)));
        PasswordKey {
            initial: Sha256::digest(*once).into(),
        }
    }

    pub fn protector_key(&self, salt: &[u8; 16]) -> ProtectorKey {
        ProtectorKey(stretch(&self.initial, salt, STRETCH_ROUNDS))
    }
}

/// A key that opens one protector's sealed VMK.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ProtectorKey(pub(crate) [u8; 32]);

impl fmt::Debug for ProtectorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProtectorKey(<redacted>)")
    }
}

/// The key stretch (BDE format § Recovery key, § User key): a record of
/// last hash (32) | initial hash (32) | salt (16) | count (u64 LE), hashed
/// `rounds` times, each result becoming "last" and the count going up.
///
/// The 88-byte record pads to exactly two SHA-256 blocks, so this calls
/// the compression function on two prepared blocks instead of going
/// through the streaming hasher: only the first 32 bytes of block 1 and the
/// count in block 2 change between rounds. It is the whole cost of an
/// unlock: measured here ~0.1 s CPU with sha2's SHA-NI path at opt-level 3,
/// but ~0.5 s under the workspace's size-optimised release profile, where
/// the SHA-NI intrinsics are not inlined (a `[profile.release.package.sha2]
/// opt-level = 3` override in the workspace manifest restores the 0.1 s).
pub fn stretch(initial: &[u8; 32], salt: &[u8; 16], rounds: u64) -> [u8; 32] {
    const IV: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut blocks = [GenericArray::<u8, sha2::digest::consts::U64>::default(); 2];
    blocks[0][32..64].copy_from_slice(initial);
    blocks[1][..16].copy_from_slice(salt);
    // SHA-256 padding for an 88-byte message: 0x80, zeros, bit length 704.
    blocks[1][24] = 0x80;
    blocks[1][56..64].copy_from_slice(&(88u64 * 8).to_be_bytes());
    let mut state = Zeroizing::new([0u32; 8]);
    for count in 0..rounds {
        blocks[1][16..24].copy_from_slice(&count.to_le_bytes());
        *state = IV;
        sha2::compress256(&mut state, &blocks[..]);
        for (i, w) in state.iter().enumerate() {
            blocks[0][4 * i..4 * i + 4].copy_from_slice(&w.to_be_bytes());
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&blocks[0][..32]);
    for b in blocks.iter_mut() {
        b.as_mut_slice().zeroize();
    }
    out
}

/// A startup key read from a `.BEK` file.
#[derive(Clone)]
pub struct StartupKey {
    /// The protector this key opens (file header GUID; the file is named
    /// after it).
    pub key_id: Guid,
    /// The BitLocker volume GUID, when the file names it.
    pub volume_guid: Option<Guid>,
    key: SecretBytes,
}

impl fmt::Debug for StartupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartupKey")
            .field("key_id", &self.key_id)
            .field("volume_guid", &self.volume_guid)
            .finish_non_exhaustive()
    }
}

/// A `.BEK` file is at most a few hundred bytes; refuse anything large.
pub const MAX_BEK_LEN: usize = 4096;

impl StartupKey {
    /// Parses a `.BEK` file (BDE format § BitLocker External Key file): a
    /// 48-byte header like the FVE metadata header (size = file length,
    /// version 1, header size 48, key ID GUID at 16), then a startup-key
    /// entry holding an external key datum whose properties carry the
    /// 32-byte key.
    pub fn parse(bytes: &[u8]) -> Result<Self, UnlockError> {
        let bad = |m: &str| UnlockError::BadStartupKey(m.to_string());
        if bytes.len() > MAX_BEK_LEN {
            return Err(bad("larger than any startup key file"));
        }
        let size = le32(bytes, 0).ok_or_else(|| bad("truncated header"))? as usize;
        let version = le32(bytes, 4).ok_or_else(|| bad("truncated header"))?;
        let header = le32(bytes, 8).ok_or_else(|| bad("truncated header"))?;
        if version != 1 || header != 48 {
            return Err(bad(&format!(
                "header version {version} / size {header}, expected 1 / 48"
            )));
        }
        if size != bytes.len() {
            return Err(bad(&format!(
                "header says {size} bytes, file has {}",
                bytes.len()
            )));
        }
        let key_id = Guid::from_disk(&bytes[16..]).ok_or_else(|| bad("truncated header"))?;
        let datums = parse_datums(&bytes[48..], 0).map_err(|e| bad(&format!("{e:#}")))?;
        let ext = datums
            .iter()
            .find(|d| d.entry_type == ENTRY_STARTUP_KEY && d.value_type == VALUE_EXTERNAL_KEY)
            .ok_or_else(|| bad("no external key entry"))?;
        let Value::ExternalKey { nested, .. } = &ext.value else {
            return Err(bad("no external key entry"));
        };
        let mut key = None;
        let mut volume_guid = None;
        for d in nested {
            match &d.value {
                Value::Key { key: k, .. } if key.is_none() => key = Some(k.clone()),
                Value::Guid(g) => volume_guid = Some(*g),
                _ => {}
            }
        }
        let key = key.ok_or_else(|| bad("the external key entry holds no key"))?;
        if key.len() != 32 {
            return Err(bad(&format!("key is {} bytes, expected 32", key.len())));
        }
        Ok(StartupKey {
            key_id,
            volume_guid,
            key,
        })
    }
}

/// What the technician has.
pub enum Credential {
    RecoveryPassword(RecoveryPassword),
    Password(PasswordKey),
    StartupKey(StartupKey),
    /// Nothing: works only when protection is suspended (clear key).
    ClearKey,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RecoveryPassword(_) => f.write_str("Credential::RecoveryPassword(<redacted>)"),
            Self::Password(_) => f.write_str("Credential::Password(<redacted>)"),
            Self::StartupKey(k) => write!(f, "Credential::StartupKey({})", k.key_id),
            Self::ClearKey => f.write_str("Credential::ClearKey"),
        }
    }
}

impl Credential {
    fn wanted(&self) -> &'static str {
        match self {
            Self::RecoveryPassword(_) => "recovery-password",
            Self::Password(_) => "password",
            Self::StartupKey(_) => "startup-key",
            Self::ClearKey => "clear-key",
        }
    }

    fn opens(&self, kind: ProtectorKind) -> bool {
        matches!(
            (self, kind),
            (Self::RecoveryPassword(_), ProtectorKind::RecoveryPassword)
                | (Self::Password(_), ProtectorKind::Password)
                | (Self::StartupKey(_), ProtectorKind::StartupKey)
                | (Self::ClearKey, ProtectorKind::ClearKey)
        )
    }
}

/// The volume's sector key as dm-crypt takes it: XTS = both AES keys;
/// CBC = the FVEK; Elephant = FVEK followed by the tweak key.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct VolumeKey {
    #[zeroize(skip)]
    pub method: EncryptionMethod,
    key: Vec<u8>,
}

impl fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VolumeKey({:?}, <{} bytes redacted>)",
            self.method,
            self.key.len()
        )
    }
}

impl VolumeKey {
    /// Builds one from raw dm-crypt key bytes (for fixtures); the length
    /// must match the method.
    pub fn from_bytes(method: EncryptionMethod, key: &[u8]) -> Option<Self> {
        (key.len() == method.dm_key_len()).then(|| VolumeKey {
            method,
            key: key.to_vec(),
        })
    }

    pub fn expose(&self) -> &[u8] {
        &self.key
    }

    /// The key as dm-crypt's table wants it (lowercase hex). Secret: keep it
    /// out of logs.
    pub fn dm_hex(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(self.key.len() * 2));
        for b in &self.key {
            use std::fmt::Write;
            let _ = write!(s, "{b:02x}");
        }
        s
    }
}

/// The result of an unlock.
#[derive(Debug)]
pub struct Unlocked {
    /// The protector that opened.
    pub protector: Guid,
    pub kind: ProtectorKind,
    pub key: VolumeKey,
}

/// AES-CCM opens `sealed` with `key`; `None` when the tag does not match
/// (wrong key or altered data).
pub(crate) fn unseal(key: &[u8], sealed: &AesCcm) -> Option<Zeroizing<Vec<u8>>> {
    let cipher = BitlockerCcm::new_from_slice(key).ok()?;
    let mut buf = Zeroizing::new(sealed.ciphertext.clone());
    cipher
        .decrypt_in_place_detached(
            GenericArray::from_slice(&sealed.nonce),
            b"",
            &mut buf,
            GenericArray::from_slice(&sealed.tag),
        )
        .ok()?;
    Some(buf)
}

/// AES-CCM seals `plain` (the inverse of [`unseal`]; for fixtures and tests).
pub fn seal(key: &[u8; 32], nonce: [u8; 12], plain: &[u8]) -> AesCcm {
    let cipher = BitlockerCcm::new(GenericArray::from_slice(key));
    let mut buf = plain.to_vec();
    let tag = cipher
        .encrypt_in_place_detached(GenericArray::from_slice(&nonce), b"", &mut buf)
        .map(<[u8; 16]>::from)
        .unwrap_or([0; 16]);
    AesCcm {
        nonce,
        tag,
        ciphertext: buf,
    }
}

/// The unsealed key container (BDE format § Unencrypted data, after the
/// MAC): size u32 (the whole container), version u16, unknown u16,
/// method u32, key bytes from 12.
fn container_key(plain: &[u8], what: &str) -> Result<Zeroizing<Vec<u8>>, UnlockError> {
    let size = le32(plain, 0).unwrap_or(0) as usize;
    if plain.len() < 12 || size != plain.len() {
        return Err(UnlockError::Malformed(format!(
            "{what} container says {size} bytes, has {}",
            plain.len()
        )));
    }
    Ok(Zeroizing::new(plain[12..].to_vec()))
}

/// Opens the volume with `credential`: tries every protector of the
/// matching kind (for a startup key, the one its file names) and returns
/// the FVEK. Does not judge whether the volume may be mapped; see
/// [`Metadata::refusal`] and [`super::dm::plan`].
pub fn unlock(meta: &Metadata, credential: &Credential) -> Result<Unlocked, UnlockError> {
    let candidates: Vec<&VmkEntry> = meta.vmks().filter(|v| credential.opens(v.kind)).collect();
    if candidates.is_empty() {
        return Err(UnlockError::NoProtector {
            wanted: credential.wanted(),
            available: meta.vmks().map(|v| (v.guid, v.kind)).collect(),
        });
    }
    let mut tried = Vec::new();
    let mut last_error = None;
    for vmk in candidates {
        let opened = match credential {
            Credential::RecoveryPassword(rp) => vmk
                .stretch_salt()
                .map(|salt| rp.protector_key(&salt).0.to_vec()),
            Credential::Password(pw) => vmk
                .stretch_salt()
                .map(|salt| pw.protector_key(&salt).0.to_vec()),
            Credential::StartupKey(sk) => {
                if sk.key_id != vmk.guid {
                    continue;
                }
                Some(sk.key.expose().to_vec())
            }
            Credential::ClearKey => vmk.clear_key().map(|k| k.expose().to_vec()),
        };
        let Some(protector_key) = opened.map(Zeroizing::new) else {
            last_error = Some(UnlockError::Malformed(format!(
                "protector {} has no key material",
                vmk.guid.short_id()
            )));
            continue;
        };
        tried.push(vmk.guid);
        let Some(sealed) = vmk.sealed_vmk() else {
            last_error = Some(UnlockError::Malformed(format!(
                "protector {} has no sealed VMK",
                vmk.guid.short_id()
            )));
            continue;
        };
        let Some(plain) = unseal(&protector_key, sealed) else {
            continue;
        };
        let vmk_key = container_key(&plain, "VMK")?;
        if vmk_key.len() != 32 {
            return Err(UnlockError::Malformed(format!(
                "VMK is {} bytes",
                vmk_key.len()
            )));
        }
        check_metadata_hash(meta, &vmk_key)?;
        let key = fvek(meta, &vmk_key)?;
        return Ok(Unlocked {
            protector: vmk.guid,
            kind: vmk.kind,
            key,
        });
    }
    if tried.is_empty() {
        if let Credential::StartupKey(sk) = credential {
            return Err(UnlockError::StartupKeyNotForThisVolume { key_id: sk.key_id });
        }
        if let Some(e) = last_error {
            return Err(e);
        }
    }
    Err(UnlockError::WrongKey { tried })
}

/// The second integrity check (cryptsetup `BITLK_get_volume_key`): the
/// validation datum, unsealed with the VMK, is a key datum (type 1) with
/// hash type 0x2005 holding the SHA-256 of the metadata block.
fn check_metadata_hash(meta: &Metadata, vmk: &[u8]) -> Result<(), UnlockError> {
    let sealed = meta
        .validation
        .sealed_hash
        .as_ref()
        .ok_or_else(|| UnlockError::Integrity("the metadata has no sealed hash".into()))?;
    let plain = unseal(vmk, sealed).ok_or_else(|| {
        UnlockError::Integrity("the sealed hash does not open with the VMK".into())
    })?;
    let (role, kind, hash_type) = (le16(&plain, 2), le16(&plain, 4), le16(&plain, 8));
    if role != Some(0) || kind != Some(1) || hash_type != Some(0x2005) || plain.len() < 44 {
        return Err(UnlockError::Integrity(format!(
            "unknown hash datum (role {role:?}, type {kind:?}, hash type {hash_type:?})"
        )));
    }
    if plain[12..44] != meta.block_sha256 {
        return Err(UnlockError::Integrity(
            "SHA-256 of the metadata differs from the sealed one".into(),
        ));
    }
    Ok(())
}

/// Unseals the FVEK with the VMK and shapes it for dm-crypt.
fn fvek(meta: &Metadata, vmk: &[u8]) -> Result<VolumeKey, UnlockError> {
    let method = meta.method.ok_or_else(|| {
        UnlockError::Malformed(format!("unknown encryption method {:#x}", meta.method_raw))
    })?;
    let sealed = meta
        .sealed_fvek()
        .ok_or_else(|| UnlockError::Malformed("no FVEK entry in the metadata".into()))?;
    // The VMK just opened and passed the hash check: a tag mismatch here
    // means damaged metadata, not a wrong key.
    let plain = unseal(vmk, sealed)
        .ok_or_else(|| UnlockError::Integrity("the FVEK does not open with the VMK".into()))?;
    let k = container_key(&plain, "FVEK")?;
    let n = method.aes_key_len();
    let key: Vec<u8> = if method.is_elephant() {
        // 64 bytes: FVEK in a 32-byte slot, then the tweak key in a 32-byte
        // slot; AES-128 uses the first 16 bytes of each slot.
        if k.len() != 64 {
            return Err(UnlockError::Malformed(format!(
                "Elephant key is {} bytes, expected 64",
                k.len()
            )));
        }
        [&k[..n], &k[32..32 + n]].concat()
    } else {
        if k.len() < method.dm_key_len() {
            return Err(UnlockError::Malformed(format!(
                "FVEK is {} bytes, {} needs {}",
                k.len(),
                method.name(),
                method.dm_key_len()
            )));
        }
        k[..method.dm_key_len()].to_vec()
    };
    let key = Zeroizing::new(key);
    VolumeKey::from_bytes(method, &key)
        .ok_or_else(|| UnlockError::Malformed("FVEK length does not match the method".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_password_forms() {
        let rp = "042647-302313-590458-071500-554323-116567-412181-516978";
        let a = RecoveryPassword::parse(rp).unwrap();
        let b = RecoveryPassword::parse(&rp.replace('-', " ")).unwrap();
        let c = RecoveryPassword::parse(&format!("  {}\n", rp.replace('-', ""))).unwrap();
        assert_eq!(a.key, b.key);
        assert_eq!(a.key, c.key);
        // 042647 / 11 = 3877 = 0x0f25
        assert_eq!(&a.key[..2], &[0x25, 0x0f]);
        let e = RecoveryPassword::parse("042648-302313-590458-071500-554323-116567-412181-516978")
            .unwrap_err();
        assert!(e.to_string().contains("group 1"), "{e}");
        assert!(!e.to_string().contains("042648"), "never echo digits");
        assert!(
            RecoveryPassword::parse("720896-302313-590458-071500-554323-116567-412181-516978")
                .unwrap_err()
                .to_string()
                .contains("too large")
        );
        for bad in [
            "",
            "12345",
            "042647-302313-590458-071500-554323-116567-412181-51697x",
            "042647-302313-590458-071500-554323-116567-412181-516978-000000",
            "٠٤٢٦٤٧",
        ] {
            assert!(RecoveryPassword::parse(bad).is_err(), "{bad}");
        }
        assert!(format!("{a:?}").contains("redacted"));
    }

    #[test]
    fn group_check_while_typing() {
        assert_eq!(check_group(""), GroupCheck::Incomplete);
        assert_eq!(check_group("0426"), GroupCheck::Incomplete);
        assert_eq!(check_group("042647"), GroupCheck::Valid);
        assert_eq!(check_group("042648"), GroupCheck::NotMultipleOf11);
        assert_eq!(check_group("720896"), GroupCheck::TooLarge);
        assert_eq!(check_group("720885"), GroupCheck::Valid);
        assert_eq!(check_group("04264a"), GroupCheck::Invalid);
        assert_eq!(check_group("0426470"), GroupCheck::Invalid);
    }

    /// The compression-function stretch equals the record hashed with the
    /// streaming hasher, round for round.
    #[test]
    fn stretch_matches_the_documented_record() {
        let initial = [3u8; 32];
        let salt = [7u8; 16];
        let mut last = [0u8; 32];
        for count in 0u64..5 {
            let mut h = Sha256::new();
            h.update(last);
            h.update(initial);
            h.update(salt);
            h.update(count.to_le_bytes());
            last = h.finalize().into();
        }
        assert_eq!(stretch(&initial, &salt, 5), last);
        assert_eq!(stretch(&initial, &salt, 0), [0u8; 32]);
    }

    #[test]
    fn ccm_seal_unseal_and_tamper() {
        let key = [9u8; 32];
        let sealed = seal(
            &key,
            [1; 12],
            b"0123456789abcdef0123456789abcdef0123456789ab",
        );
        assert_eq!(
            unseal(&key, &sealed).as_deref().map(|v| v.as_slice()),
            Some(&b"0123456789abcdef0123456789abcdef0123456789ab"[..])
        );
        let mut bad = sealed.clone();
        bad.ciphertext[0] ^= 1;
        assert!(unseal(&key, &bad).is_none());
        assert!(unseal(&[8u8; 32], &sealed).is_none());
        assert!(unseal(&[8u8; 7], &sealed).is_none(), "bad key length");
    }

    #[test]
    fn hostile_bek_files() {
        for len in [0usize, 10, 47, 48, 60, 5000] {
            assert!(StartupKey::parse(&vec![0u8; len]).is_err(), "{len}");
        }
        let mut h = vec![0u8; 56];
        h[0..4].copy_from_slice(&56u32.to_le_bytes());
        h[4..8].copy_from_slice(&1u32.to_le_bytes());
        h[8..12].copy_from_slice(&48u32.to_le_bytes());
        h[48..50].copy_from_slice(&200u16.to_le_bytes());
        assert!(StartupKey::parse(&h).is_err(), "entry past the end");
    }

    #[test]
    fn keys_do_not_print() {
        let k = VolumeKey::from_bytes(EncryptionMethod::AesXts128, &[0xab; 32]).unwrap();
        let s = format!("{k:?}");
        assert!(!s.contains("ab") || !s.contains("abab"), "{s}");
        assert_eq!(k.dm_hex().len(), 64);
        assert!(VolumeKey::from_bytes(EncryptionMethod::AesXts128, &[0; 31]).is_none());
        assert!(format!("{:?}", PasswordKey::new("x")).contains("redacted"));
    }
}
