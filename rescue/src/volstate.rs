//! The state of a Windows volume before anything writes to it: is it
//! BitLocker (and which key protectors could unlock it), is NTFS marked
//! dirty, is Windows hibernated on it (Fast Startup included).
//!
//! Reads a raw volume (block device or image file at a byte offset) and,
//! for hibernation, a mounted volume root. This does not unlock BitLocker,
//! decrypt anything, verify FVE metadata checksums or repair NTFS; it only
//! reports, so the caller can choose the safe path or tell the technician
//! what to do. All on-disk input is untrusted: every length and offset is
//! bounds-checked and every read is capped.
//!
//! References: Joachim Metz, "BitLocker Drive Encryption (BDE) format"
//! (libbde documentation, `documentation/BitLocker Drive Encryption (BDE) format.asciidoc`),
//! cross-checked with cryptsetup's `lib/bitlk/bitlk.c`; NTFS boot sector,
//! file record and attribute layouts as in the Linux-NTFS project's "NTFS
//! Documentation" and ntfs-3g `layout.h`; hibernation file signatures as
//! read by ntfs-3g (`hiberfil.sys` check) and Volatility.

use anyhow::{anyhow, bail, ensure, Context, Result};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// What a volume's boot sector says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind {
    Ntfs,
    Bitlocker,
    Other,
}

/// One way to unlock a BitLocker volume (a VMK entry in the FVE metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyProtector {
    /// Lowercase 8-4-4-4-12, as `manage-bde -protectors -get` shows it.
    pub guid: String,
    /// "password", "recovery-password", "tpm", "tpm-pin", "startup-key",
    /// "clear-key", "smart-card", or "unknown-0xNNNN".
    pub kind: String,
}

/// What the FVE metadata says about a BitLocker volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitlockerInfo {
    /// FVE metadata block version: 1 = Vista, 2 = Windows 7 and later.
    pub version: u16,
    /// e.g. "AES-XTS-128"; `None` when the method field is unknown.
    pub encryption_method: Option<String>,
    pub key_protectors: Vec<KeyProtector>,
    /// The BitLocker volume identifier from the metadata header.
    pub volume_guid: Option<String>,
}

/// NTFS `$Volume` facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NtfsState {
    /// `VOLUME_IS_DIRTY`: Windows wants chkdsk before trusting the volume.
    pub dirty: bool,
    pub label: Option<String>,
    pub serial: u64,
    pub ntfs_version: (u8, u8),
}

/// `hiberfil.sys` state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hibernation {
    /// No `hiberfil.sys`.
    None,
    /// A hibernation image Windows will resume ("hibr"/"HIBR"): full
    /// hibernation or Fast Startup. Writing to the volume loses data.
    Live,
    /// Resumed already ("wake"/"RSTR", or a zeroed header).
    Resumed,
    /// A header we do not recognise (described).
    Unknown(String),
}

/// Boot sector OEM ID of a BitLocker system/data volume (BDE format § Volume header).
const FVE_SIGNATURE: &[u8; 8] = b"-FVE-FS-";
/// OEM ID of a BitLocker To Go volume, which keeps a FAT boot sector.
const TOGO_SIGNATURE: &[u8; 8] = b"MSWIN4.1";
const NTFS_SIGNATURE: &[u8; 8] = b"NTFS    ";
/// BitLocker identifier {4967d63b-2e29-4ad8-8399-f6a339e3d001}, as stored.
const BITLOCKER_GUID: [u8; 16] = [
    0x3b, 0xd6, 0x67, 0x49, 0x29, 0x2e, 0xd8, 0x4a, 0x83, 0x99, 0xf6, 0xa3, 0x39, 0xe3, 0xd0, 0x01,
];
/// Where the identifier and the three FVE metadata block offsets sit in the
/// boot sector: Windows 7+ at 0xA0, To Go at 0x1A8 (BDE format § Volume header).
const GUID_AT_FVE: usize = 0xA0;
const GUID_AT_TOGO: usize = 0x1A8;
/// FVE metadata block header is 64 bytes, metadata header 48 (BDE format §
/// FVE metadata block header, § FVE metadata header).
const BLOCK_HEADER_LEN: usize = 64;
const METADATA_HEADER_LEN: usize = 48;
/// Real FVE metadata is a few KiB; Windows reserves 64 KiB per copy.
const MAX_METADATA: usize = 64 * 1024;
/// FVE entry type 0x0002: volume master key; value type 0x0008: VMK datum.
const ENTRY_VMK: u16 = 0x0002;
const VALUE_VMK: u16 = 0x0008;

fn le16(b: &[u8], at: usize) -> Result<u16> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .with_context(|| format!("structure too short for a u16 at +{at:#x}"))
}

fn le32(b: &[u8], at: usize) -> Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .with_context(|| format!("structure too short for a u32 at +{at:#x}"))
}

fn le64(b: &[u8], at: usize) -> Result<u64> {
    let s = b
        .get(at..at + 8)
        .with_context(|| format!("structure too short for a u64 at +{at:#x}"))?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

/// A Microsoft GUID (Data1-3 little-endian, Data4 as stored) as lowercase
/// 8-4-4-4-12: the BitLocker module's one spelling.
fn guid(b: &[u8]) -> Result<String> {
    crate::bitlocker::Guid::from_disk(b)
        .map(|g| g.to_string())
        .context("GUID truncated")
}

fn read_at(dev: &mut (impl Read + Seek), at: u64, len: usize) -> Result<Vec<u8>> {
    dev.seek(SeekFrom::Start(at))
        .with_context(|| format!("seeking to byte {at}"))?;
    let mut buf = vec![0u8; len];
    dev.read_exact(&mut buf)
        .with_context(|| format!("reading {len} bytes at byte {at}"))?;
    Ok(buf)
}

/// A BitLocker To Go volume: a FAT boot sector (`MSWIN4.1`) carrying the
/// BitLocker identifier.
pub fn is_bitlocker_to_go(boot: &[u8]) -> bool {
    boot.get(3..11) == Some(TOGO_SIGNATURE) && bitlocker_guid_at(boot).is_some()
}

/// Writes the To Go identifier into a test boot sector.
#[cfg(test)]
pub fn mark_to_go_for_tests(boot: &mut [u8]) {
    boot[GUID_AT_TOGO..GUID_AT_TOGO + 16].copy_from_slice(&BITLOCKER_GUID);
}

/// Where the BitLocker identifier is in this boot sector, if anywhere.
fn bitlocker_guid_at(boot: &[u8]) -> Option<usize> {
    let oem = boot.get(3..11)?;
    let at = if oem == FVE_SIGNATURE {
        GUID_AT_FVE
    } else if oem == TOGO_SIGNATURE {
        GUID_AT_TOGO
    } else {
        return None;
    };
    // The encrypt-on-write identifier marks a BitLocker volume too (one
    // the rescue refuses to map, but whose protectors it reports).
    let id = boot.get(at..at + 16)?;
    (id == BITLOCKER_GUID || id == crate::bitlocker::metadata::IDENTIFIER_EOW).then_some(at)
}

/// Classifies the volume at `offset` by its boot sector's OEM ID.
pub fn volume_kind(dev: &mut (impl Read + Seek), offset: u64) -> Result<VolumeKind> {
    let boot = read_at(dev, offset, 512).context("reading the boot sector")?;
    if boot.get(3..11) == Some(FVE_SIGNATURE) || bitlocker_guid_at(&boot).is_some() {
        Ok(VolumeKind::Bitlocker)
    } else if boot.get(3..11) == Some(NTFS_SIGNATURE) {
        Ok(VolumeKind::Ntfs)
    } else {
        Ok(VolumeKind::Other)
    }
}

/// Reads the BitLocker FVE metadata of the volume at `offset`: boot sector
/// → the three FVE metadata block offsets → the first copy that parses →
/// metadata header (volume GUID, encryption method) and its entries (VMKs
/// carry the key protector GUID and protection type).
pub fn read_bitlocker(dev: &mut (impl Read + Seek), offset: u64) -> Result<BitlockerInfo> {
    let boot = read_at(dev, offset, 512).context("reading the boot sector")?;
    let Some(at) = bitlocker_guid_at(&boot) else {
        if boot.get(3..11) == Some(FVE_SIGNATURE) {
            bail!("BitLocker volume without the Windows 7 identifier (Windows Vista layout?): not supported");
        }
        bail!("not a BitLocker volume (no -FVE-FS- or To Go signature)");
    };
    let mut errors = Vec::new();
    for copy in 0..3 {
        let rel = le64(&boot, at + 16 + copy * 8)?;
        let result = offset
            .checked_add(rel)
            .context("FVE metadata offset overflows")
            .and_then(|abs| read_fve_block(dev, abs));
        match result {
            Ok(info) => return Ok(info),
            Err(e) => errors.push(format!("copy {} at +{rel:#x}: {e:#}", copy + 1)),
        }
    }
    Err(anyhow!(
        "no readable BitLocker FVE metadata ({})",
        errors.join("; ")
    ))
}

fn read_fve_block(dev: &mut (impl Read + Seek), at: u64) -> Result<BitlockerInfo> {
    let head = read_at(dev, at, BLOCK_HEADER_LEN + METADATA_HEADER_LEN)?;
    // § FVE metadata block header: signature 0, version u16 at 0xA.
    ensure!(&head[..8] == FVE_SIGNATURE, "no -FVE-FS- signature");
    let version = le16(&head, 0xA)?;
    ensure!(
        version == 1 || version == 2,
        "unknown FVE metadata version {version}"
    );
    // § FVE metadata header (at 64): size u32 at 0 (header included),
    // header size u32 at 8, volume GUID at 16, encryption method u16 at 36.
    let md = &head[BLOCK_HEADER_LEN..];
    let size = le32(md, 0)? as usize;
    let header_size = le32(md, 8)? as usize;
    ensure!(
        header_size == METADATA_HEADER_LEN,
        "FVE metadata header size {header_size}, expected 48"
    );
    ensure!(
        (METADATA_HEADER_LEN..=MAX_METADATA).contains(&size),
        "FVE metadata size {size} out of range"
    );
    let volume_guid = guid(&md[16..32])?;
    let encryption_method = method_name(le16(md, 36)?).map(str::to_owned);
    let entries = read_at(dev, at + BLOCK_HEADER_LEN as u64, size)?;
    let key_protectors = key_protectors(&entries[METADATA_HEADER_LEN..])?;
    Ok(BitlockerInfo {
        version,
        encryption_method,
        key_protectors,
        volume_guid: Some(volume_guid),
    })
}

/// § FVE metadata header, encryption methods.
fn method_name(m: u16) -> Option<&'static str> {
    Some(match m {
        0x8000 => "AES-CBC-128-Elephant",
        0x8001 => "AES-CBC-256-Elephant",
        0x8002 => "AES-CBC-128",
        0x8003 => "AES-CBC-256",
        0x8004 => "AES-XTS-128",
        0x8005 => "AES-XTS-256",
        _ => return None,
    })
}

/// § Key protection types of a VMK.
fn protection_name(p: u16) -> String {
    match p {
        0x0000 => "clear-key".into(),
        0x0100 => "tpm".into(),
        0x0200 => "startup-key".into(),
        0x0500 => "tpm-pin".into(),
        0x0800 => "recovery-password".into(),
        0x1000 => "smart-card".into(),
        0x2000 => "password".into(),
        p => format!("unknown-{p:#06x}"),
    }
}

/// Walks the metadata entries (§ FVE metadata entry: size u16 at 0, entry
/// type at 2, value type at 4, version at 6, data at 8). A VMK datum's data
/// is GUID (16), modification time (8), unknown u16, protection type u16.
fn key_protectors(mut entries: &[u8]) -> Result<Vec<KeyProtector>> {
    let mut out = Vec::new();
    while entries.len() >= 8 {
        let size = usize::from(le16(entries, 0)?);
        // A zero size ends the list (the rest is padding); anything shorter
        // than a header would loop forever.
        if size == 0 {
            break;
        }
        ensure!(
            (8..=entries.len()).contains(&size),
            "FVE metadata entry of size {size} with {} bytes left",
            entries.len()
        );
        let entry = &entries[..size];
        if le16(entry, 2)? == ENTRY_VMK && le16(entry, 4)? == VALUE_VMK {
            out.push(KeyProtector {
                guid: guid(entry.get(8..24).context("VMK entry truncated")?)?,
                kind: protection_name(le16(entry, 8 + 26)?),
            });
        }
        entries = &entries[size..];
    }
    Ok(out)
}

/// Reads `$Volume` of the NTFS volume at `offset`: the dirty flag
/// (`$VOLUME_INFORMATION` flags & 0x0001), label, serial and NTFS version.
///
/// Parsed here rather than with the `ntfs` crate: that crate turns any I/O
/// error met while decoding a structure (a short read of a truncated image,
/// EIO from a failing disk) into `unreachable!()`, and a panic reboots the
/// rescue. We need one MFT record, so we read exactly that, bounded.
pub fn read_ntfs_state(dev: &mut (impl Read + Seek), offset: u64) -> Result<NtfsState> {
    let boot = read_at(dev, offset, 512).context("reading the NTFS boot sector")?;
    // NTFS boot sector (BIOS parameter block): OEM ID at 3, bytes per sector
    // 0xB, sectors per cluster 0xD, MFT cluster 0x30, clusters per file
    // record 0x40, serial 0x48, 0x55AA at 0x1FE.
    ensure!(
        boot.get(3..11) == Some(NTFS_SIGNATURE),
        "not an NTFS volume (no \"NTFS\" OEM ID)"
    );
    ensure!(
        boot[0x1FE..0x200] == [0x55, 0xAA],
        "NTFS boot sector lacks its 55 AA signature"
    );
    let bps = u64::from(le16(&boot, 0x0B)?);
    ensure!(
        bps.is_power_of_two() && (256..=4096).contains(&bps),
        "NTFS bytes per sector {bps} is invalid"
    );
    // Above 0x80 the field is a negative power of two (64 KiB+ clusters), as ntfs-3g reads it.
    let spc_raw = boot[0x0D];
    let spc = if spc_raw > 0x80 {
        let shift = 256 - u32::from(spc_raw);
        ensure!(
            shift <= 12,
            "NTFS sectors per cluster {spc_raw:#x} is invalid"
        );
        1u64 << shift
    } else {
        ensure!(
            spc_raw != 0 && spc_raw.is_power_of_two(),
            "NTFS sectors per cluster {spc_raw} is invalid"
        );
        u64::from(spc_raw)
    };
    let cluster = bps * spc;
    // Negative: the record is 2^-n bytes; positive: n clusters.
    let cpr = boot[0x40] as i8;
    let record_len = if cpr < 0 {
        ensure!(cpr >= -31, "NTFS file record size {cpr} is invalid");
        1u64 << (-i32::from(cpr))
    } else {
        u64::from(cpr.unsigned_abs()) * cluster
    };
    ensure!(
        (1024..=65536).contains(&record_len) && record_len % FIXUP_STRIDE as u64 == 0,
        "NTFS file record size {record_len} is not supported"
    );
    let serial = le64(&boot, 0x48)?;
    let mft = le64(&boot, 0x30)?
        .checked_mul(cluster)
        .context("NTFS MFT position overflows")?;
    // $Volume is file record 3, always in the MFT's first extent.
    let at = mft
        .checked_add(VOLUME_RECORD * record_len)
        .and_then(|a| a.checked_add(offset))
        .context("NTFS $Volume position overflows")?;
    let mut rec = read_at(dev, at, record_len as usize).context("reading $Volume")?;
    apply_fixups(&mut rec).context("$Volume record")?;
    volume_attributes(&rec, serial)
}

/// Update sequence arrays protect each 512-byte block of a record, whatever
/// the sector size (ntfs-3g `NTFS_BLOCK_SIZE`).
const FIXUP_STRIDE: usize = 512;
/// `$Volume`'s MFT record number.
const VOLUME_RECORD: u64 = 3;
/// `$VOLUME_NAME` and `$VOLUME_INFORMATION` attribute types, and the
/// end-of-attributes marker.
const ATTR_VOLUME_NAME: u32 = 0x60;
const ATTR_VOLUME_INFORMATION: u32 = 0x70;
const ATTR_END: u32 = 0xFFFF_FFFF;
/// `VOLUME_IS_DIRTY` in `$VOLUME_INFORMATION` flags.
const VOLUME_IS_DIRTY: u16 = 0x0001;

/// Checks and undoes the multi-sector transfer protection of a file record:
/// header "FILE" at 0, update sequence offset u16 at 4 and count u16 at 6
/// (the sequence number plus one saved u16 per 512-byte block).
fn apply_fixups(rec: &mut [u8]) -> Result<()> {
    ensure!(rec.get(..4) == Some(b"FILE"), "not a FILE record");
    let usa = usize::from(le16(rec, 4)?);
    let count = usize::from(le16(rec, 6)?);
    ensure!(
        count == rec.len() / FIXUP_STRIDE + 1,
        "update sequence count {count} does not fit a {}-byte record",
        rec.len()
    );
    let usn = rec
        .get(usa..usa + 2)
        .context("update sequence array out of the record")?
        .to_vec();
    for i in 1..count {
        let end = i * FIXUP_STRIDE;
        let saved = rec
            .get(usa + 2 * i..usa + 2 * i + 2)
            .context("update sequence array out of the record")?
            .to_vec();
        ensure!(
            rec[end - 2..end] == usn[..],
            "torn write: block {i} does not end with the update sequence number"
        );
        rec[end - 2..end].copy_from_slice(&saved);
    }
    Ok(())
}

/// Walks a file record's attributes (type u32 at 0, length u32 at 4,
/// non-resident flag at 8; resident value length u32 at 0x10, offset u16 at
/// 0x14) for the volume name and information.
fn volume_attributes(rec: &[u8], serial: u64) -> Result<NtfsState> {
    // Record header: first attribute offset u16 at 0x14, bytes in use u32 at 0x18.
    let in_use = (le32(rec, 0x18)? as usize).min(rec.len());
    let mut at = usize::from(le16(rec, 0x14)?);
    let mut label = None;
    let mut info = None;
    while at + 8 <= in_use {
        let ty = le32(rec, at)?;
        if ty == ATTR_END {
            break;
        }
        let len = le32(rec, at + 4)? as usize;
        ensure!(
            len >= 0x18 && len.is_multiple_of(8) && at + len <= in_use,
            "$Volume attribute {ty:#x} has bad length {len}"
        );
        let attr = &rec[at..at + len];
        if (ty == ATTR_VOLUME_NAME || ty == ATTR_VOLUME_INFORMATION) && attr[8] == 0 {
            let vlen = le32(attr, 0x10)? as usize;
            let voff = usize::from(le16(attr, 0x14)?);
            let value = attr
                .get(voff..voff.saturating_add(vlen))
                .with_context(|| format!("$Volume attribute {ty:#x} value out of bounds"))?;
            if ty == ATTR_VOLUME_NAME {
                let units = value
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]));
                label = Some(
                    char::decode_utf16(units)
                        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                        .collect::<String>(),
                );
            } else {
                // $VOLUME_INFORMATION: major 8, minor 9, flags u16 at 0xA.
                ensure!(
                    value.len() >= 12,
                    "$VOLUME_INFORMATION is {} bytes",
                    value.len()
                );
                info = Some((value[8], value[9], le16(value, 0x0A)?));
            }
        }
        at += len;
    }
    let (major, minor, flags) = info.context("$Volume has no resident $VOLUME_INFORMATION")?;
    Ok(NtfsState {
        dirty: flags & VOLUME_IS_DIRTY != 0,
        label: label.filter(|l| !l.is_empty()),
        serial,
        ntfs_version: (major, minor),
    })
}

/// `hiberfil.sys` as the report spells it (`none`, `live`, `resumed`,
/// `unknown: …`), and whether that blocks writing (live, or not readable
/// as a known state).
pub fn hibernation_summary(root: &Path) -> (String, bool) {
    match hiberfil_state(root) {
        Ok(Hibernation::Live) => ("live".into(), true),
        Ok(Hibernation::None) => ("none".into(), false),
        Ok(Hibernation::Resumed) => ("resumed".into(), false),
        Ok(Hibernation::Unknown(s)) => (format!("unknown: {s}"), true),
        Err(e) => (format!("unknown: {e:#}"), true),
    }
}

/// Reads the first 8 bytes of `hiberfil.sys` at the mounted volume `root`
/// (name matched case-insensitively); no file means [`Hibernation::None`].
pub fn hiberfil_state(root: &Path) -> Result<Hibernation> {
    let Some(path) = crate::windows::resolve_ci(root, &["hiberfil.sys"])? else {
        return Ok(Hibernation::None);
    };
    let mut f =
        std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut head = Vec::with_capacity(8);
    f.by_ref()
        .take(8)
        .read_to_end(&mut head)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(hibernation_from_header(&head))
}

/// Classifies a hibernation file by its leading bytes (the signature is
/// the first four).
pub fn hibernation_from_header(first: &[u8]) -> Hibernation {
    // An empty file holds nothing to resume.
    if first.iter().all(|&b| b == 0) && (first.is_empty() || first.len() >= 4) {
        return Hibernation::Resumed;
    }
    match first.get(..4) {
        // "hibr" up to Windows 7, "HIBR" from Windows 8 (Fast Startup too).
        Some(b"hibr") | Some(b"HIBR") => Hibernation::Live,
        // Written over the signature once Windows has resumed.
        Some(b"wake") | Some(b"WAKE") | Some(b"rstr") | Some(b"RSTR") => Hibernation::Resumed,
        _ => Hibernation::Unknown(format!(
            "unrecognised hiberfil.sys header {}",
            first
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::winreg::tests::corpus;
    use std::collections::HashMap;
    use std::io::Cursor;
    use std::path::PathBuf;
    use std::sync::OnceLock;

    /// Extracts the BitLocker images once per test run (sparse: tiny on disk).
    fn bitlk_dir() -> &'static Path {
        static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
        DIR.get_or_init(|| {
            let tar = corpus("bitlocker/bitlk-images.tar.xz");
            let dir = tempfile::tempdir().unwrap();
            let st = std::process::Command::new("tar")
                .arg("xJSf")
                .arg(&tar)
                .arg("-C")
                .arg(dir.path())
                .status()
                .expect("tar is required");
            assert!(st.success(), "extracting {}", tar.display());
            dir
        })
        .path()
    }

    /// images.conf: `[name]` sections of `KEY=value`.
    fn images_conf() -> HashMap<String, HashMap<String, String>> {
        let text = std::fs::read_to_string(corpus("bitlocker/images.conf")).unwrap();
        let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
        let mut cur = String::new();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                cur = name.to_string();
            } else if let Some((k, v)) = line.split_once('=') {
                out.entry(cur.clone())
                    .or_default()
                    .insert(k.into(), v.into());
            }
        }
        out
    }

    fn image(name: &str) -> PathBuf {
        let p = bitlk_dir().join(format!("{name}.img"));
        assert!(
            p.exists(),
            "{} missing from bitlk-images.tar.xz",
            p.display()
        );
        p
    }

    fn check(name: &str, method: &str, expect: &[(&str, &str)]) {
        let conf = images_conf();
        let conf = conf
            .get(name)
            .unwrap_or_else(|| panic!("{name} not in images.conf"));
        let mut f = std::fs::File::open(image(name)).unwrap();
        assert_eq!(volume_kind(&mut f, 0).unwrap(), VolumeKind::Bitlocker);
        let info = read_bitlocker(&mut f, 0).unwrap();
        assert_eq!(info.version, 2, "{name}");
        assert_eq!(info.encryption_method.as_deref(), Some(method), "{name}");
        assert_eq!(
            info.volume_guid.as_deref(),
            Some(conf["GUID"].as_str()),
            "{name}"
        );
        for (key, kind) in expect {
            let guid = conf[*key].as_str();
            assert!(!guid.is_empty(), "{name}: {key} empty in images.conf");
            let kp = KeyProtector {
                guid: guid.into(),
                kind: (*kind).into(),
            };
            assert!(
                info.key_protectors.contains(&kp),
                "{name}: {kp:?} not in {:?}",
                info.key_protectors
            );
        }
    }

    #[test]
    fn bitlocker_win10_aes_xts() {
        check(
            "bitlk-aes-xts-128",
            "AES-XTS-128",
            &[
                ("PW_VMK_GUID", "password"),
                ("RP_VMK_GUID", "recovery-password"),
            ],
        );
    }

    #[test]
    fn bitlocker_win7_aes_cbc_and_elephant() {
        check(
            "bitlk-aes-cbc-128",
            "AES-CBC-128",
            &[
                ("PW_VMK_GUID", "password"),
                ("RP_VMK_GUID", "recovery-password"),
            ],
        );
        check(
            "bitlk-aes-cbc-elephant-128",
            "AES-CBC-128-Elephant",
            &[
                ("PW_VMK_GUID", "password"),
                ("RP_VMK_GUID", "recovery-password"),
            ],
        );
    }

    #[test]
    fn bitlocker_startup_key_clear_key_smart_card() {
        check(
            "bitlk-aes-xts-128-startup-key",
            "AES-XTS-128",
            &[
                ("SK_VMK_GUID", "startup-key"),
                ("RP_VMK_GUID", "recovery-password"),
            ],
        );
        check(
            "bitlk-aes-xts-128-clearkey-only",
            "AES-XTS-128",
            &[("CLEARKEY_VMK_GUID", "clear-key")],
        );
        check(
            "bitlk-aes-xts-128-smart-card",
            "AES-XTS-128",
            &[
                ("SC_VMK_GUID", "smart-card"),
                ("RP_VMK_GUID", "recovery-password"),
            ],
        );
    }

    #[test]
    fn bitlocker_to_go_and_4k() {
        check(
            "bitlk-togo-aes-xts-128",
            "AES-XTS-128",
            &[
                ("PW_VMK_GUID", "password"),
                ("RP_VMK_GUID", "recovery-password"),
            ],
        );
        check(
            "bitlk-aes-xts-128-4k",
            "AES-XTS-128",
            &[
                ("PW_VMK_GUID", "password"),
                ("RP_VMK_GUID", "recovery-password"),
            ],
        );
    }

    #[test]
    fn bitlocker_at_an_offset_and_garbage() {
        // The image behind 1 MiB of zeros, as a partition on a disk would be.
        let mut img = vec![0u8; 1 << 20];
        let mut f = std::fs::File::open(image("bitlk-aes-xts-128")).unwrap();
        // Enough to hold the boot sector and all three metadata copies.
        let mut head = Vec::new();
        f.by_ref().take(64 << 20).read_to_end(&mut head).unwrap();
        img.extend_from_slice(&head);
        let mut c = Cursor::new(&img);
        let info = read_bitlocker(&mut c, 1 << 20).unwrap();
        assert_eq!(info.key_protectors.len(), 2);
        // Not BitLocker, or cut short: errors.
        assert!(read_bitlocker(&mut Cursor::new(vec![0u8; 4096]), 0).is_err());
        assert!(read_bitlocker(&mut Cursor::new(head[..512].to_vec()), 0).is_err());
        assert!(read_bitlocker(&mut Cursor::new(Vec::new()), 0).is_err());
        // Scribbled FVE entries: errors or answers, never panics.
        let boot = &head[..512];
        for (i, fill) in [
            (0x70usize, 0xFFu8),
            (0x70, 0x00),
            (0xB0, 0x01),
            (0x40, 0xFF),
        ] {
            let mut bad = head.clone();
            for k in 0..3 {
                let at = le64(boot, GUID_AT_FVE + 16 + k * 8).unwrap() as usize;
                bad[at + i..at + i + 2].fill(fill);
            }
            let _ = read_bitlocker(&mut Cursor::new(&bad), 0);
        }
        let mut noise: Vec<u8> = (0..(1u32 << 16))
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        noise[3..11].copy_from_slice(FVE_SIGNATURE);
        noise[GUID_AT_FVE..GUID_AT_FVE + 16].copy_from_slice(&BITLOCKER_GUID);
        assert!(read_bitlocker(&mut Cursor::new(noise), 0).is_err());
    }

    fn ntfs_disk() -> Vec<u8> {
        let f = std::fs::File::open(corpus("ntfs/windows-ntfs-32m.raw.gz")).unwrap();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(f)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// NTFS starts at LBA 128 (ntfs/SOURCE.md).
    const NTFS_AT: u64 = 128 * 512;

    /// Byte offset (in the disk image) of `$VOLUME_INFORMATION`'s flags in
    /// `$Volume` (MFT record 3), found the long way so the test does not
    /// trust the code under test: boot sector → MFT → record 3 → attribute
    /// 0x70 (resident value at +0x14, flags at value+0xA).
    fn volume_flags_offset(disk: &[u8]) -> usize {
        let v = NTFS_AT as usize;
        let bps = u16::from_le_bytes([disk[v + 0x0B], disk[v + 0x0C]]) as usize;
        let spc = disk[v + 0x0D] as usize;
        let cluster = bps * spc;
        let mft_lcn = u64::from_le_bytes(disk[v + 0x30..v + 0x38].try_into().unwrap()) as usize;
        let cpr = disk[v + 0x40] as i8;
        let rec_size = if cpr < 0 {
            1usize << (-cpr)
        } else {
            cpr as usize * cluster
        };
        let rec = v + mft_lcn * cluster + 3 * rec_size;
        assert_eq!(&disk[rec..rec + 4], b"FILE");
        let mut a = rec + u16::from_le_bytes([disk[rec + 0x14], disk[rec + 0x15]]) as usize;
        loop {
            let ty = u32::from_le_bytes(disk[a..a + 4].try_into().unwrap());
            assert_ne!(ty, u32::MAX, "no $VOLUME_INFORMATION");
            let len = u32::from_le_bytes(disk[a + 4..a + 8].try_into().unwrap()) as usize;
            if ty == 0x70 {
                let val = a + u16::from_le_bytes([disk[a + 0x14], disk[a + 0x15]]) as usize;
                return val + 0x0A;
            }
            a += len;
        }
    }

    #[test]
    fn ntfs_corpus_clean_then_dirty() {
        let mut disk = ntfs_disk();
        assert_eq!(
            volume_kind(&mut Cursor::new(&disk), NTFS_AT).unwrap(),
            VolumeKind::Ntfs
        );
        let st = read_ntfs_state(&mut Cursor::new(&disk), NTFS_AT).unwrap();
        assert!(!st.dirty);
        assert_eq!(st.label.as_deref(), Some("Test index"));
        assert_eq!(st.ntfs_version, (3, 1));
        assert_ne!(st.serial, 0);

        let flags = volume_flags_offset(&disk);
        // The flags must not sit where the update sequence fixups go.
        assert!(flags % 512 < 510);
        disk[flags] |= 0x01; // VOLUME_IS_DIRTY
        let st = read_ntfs_state(&mut Cursor::new(&disk), NTFS_AT).unwrap();
        assert!(st.dirty);
        assert_eq!(st.label.as_deref(), Some("Test index"));
    }

    #[test]
    fn ntfs_garbage_and_truncated() {
        let disk = ntfs_disk();
        assert!(
            read_ntfs_state(&mut Cursor::new(&disk), 0).is_err(),
            "MBR is not NTFS"
        );
        assert_eq!(
            volume_kind(&mut Cursor::new(&disk), 0).unwrap(),
            VolumeKind::Other
        );
        let cut = &disk[..NTFS_AT as usize + 8192];
        assert!(read_ntfs_state(&mut Cursor::new(cut), NTFS_AT).is_err());
        assert!(read_ntfs_state(&mut Cursor::new(vec![0u8; 100]), 0).is_err());
        // Scribble over the MFT: errors or answers, never panics.
        let mut bad = disk.clone();
        let flags = volume_flags_offset(&disk);
        let rec_start = flags - flags % 1024;
        for i in (rec_start..rec_start + 4096).step_by(5) {
            bad[i] = 0xFF;
        }
        let _ = read_ntfs_state(&mut Cursor::new(&bad), NTFS_AT);
        let mut f = std::fs::File::open(image("bitlk-aes-xts-128")).unwrap();
        assert!(read_ntfs_state(&mut f, 0).is_err(), "BitLocker is not NTFS");
        // A disk that fails mid-read (EIO) is an error, not a panic.
        for after in [0, 100, NTFS_AT as usize + 600, flags - 10] {
            let mut dev = Failing {
                data: Cursor::new(&disk),
                ok_until: after as u64,
            };
            assert!(
                read_ntfs_state(&mut dev, NTFS_AT).is_err(),
                "fail after {after}"
            );
            assert!(read_bitlocker(&mut dev, NTFS_AT).is_err());
        }
    }

    /// A device whose reads fail with EIO past `ok_until`.
    struct Failing<'a> {
        data: Cursor<&'a Vec<u8>>,
        ok_until: u64,
    }

    impl Read for Failing<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.data.position() + buf.len() as u64 > self.ok_until {
                return Err(std::io::Error::from_raw_os_error(5));
            }
            self.data.read(buf)
        }
    }

    impl Seek for Failing<'_> {
        fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
            self.data.seek(pos)
        }
    }

    #[test]
    fn hibernation_headers() {
        assert_eq!(hibernation_from_header(b"hibr\0\0\0\0"), Hibernation::Live);
        assert_eq!(
            hibernation_from_header(b"HIBR\x01\x02\x03\x04"),
            Hibernation::Live
        );
        assert_eq!(
            hibernation_from_header(b"wake\0\0\0\0"),
            Hibernation::Resumed
        );
        assert_eq!(hibernation_from_header(b"RSTR"), Hibernation::Resumed);
        assert_eq!(hibernation_from_header(&[0; 8]), Hibernation::Resumed);
        assert_eq!(hibernation_from_header(b""), Hibernation::Resumed);
        assert!(matches!(
            hibernation_from_header(b"MZ\x90\0"),
            Hibernation::Unknown(_)
        ));
        assert!(matches!(
            hibernation_from_header(b"\0\0"),
            Hibernation::Unknown(_)
        ));
        assert!(matches!(
            hibernation_from_header(b"hib"),
            Hibernation::Unknown(_)
        ));
    }

    #[test]
    fn hiberfil_on_a_volume_root() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(hiberfil_state(tmp.path()).unwrap(), Hibernation::None);
        std::fs::write(tmp.path().join("HIBERFIL.SYS"), b"HIBR\0\0\0\0rest").unwrap();
        assert_eq!(hiberfil_state(tmp.path()).unwrap(), Hibernation::Live);
        std::fs::write(tmp.path().join("HIBERFIL.SYS"), b"wake").unwrap();
        assert_eq!(hiberfil_state(tmp.path()).unwrap(), Hibernation::Resumed);
        // Two case variants: ambiguity is an error.
        std::fs::write(tmp.path().join("hiberfil.sys"), b"hibr").unwrap();
        assert!(hiberfil_state(tmp.path()).is_err());
    }
}
