//! Microsoft Defender quarantine: `Quarantine\Entries\{GUID}` records what
//! was quarantined, `Quarantine\ResourceData\XX\<40 hex>` holds the bytes.
//! Also writes both files, for fixtures and the victim-disk maker.
//!
//! Both files are RC4-encrypted with the 256-byte key hard-coded in
//! `mpengine.dll` ([`RC4_KEY`], published by several forensic tools). An
//! Entries file is three sections, each encrypted on its own (the RC4
//! state restarts per section):
//!
//! * header, 0x3C bytes: magic `DB E8 C5 01 01 00 01 00` + 8 zero bytes,
//!   24 bytes (zero in every sample), u32 length of section 1, u32 length
//!   of section 2, 12 bytes not understood (8 varying + `DB E8 C5 02`);
//! * section 1: entry GUID (16), 16 bytes, FILETIME of the detection, u32,
//!   u16, u16, u32 string count, then that many NUL-terminated 8-bit
//!   strings, the first being the detection name (`Virus:DOS/EICAR_Test_File`);
//! * section 2: u32 item count, one u32 offset per item (from the section
//!   start), and per item: NUL-terminated UTF-16 path (`\\?\C:\…`), u16
//!   field count, NUL-terminated type (`file`; registry and process items
//!   have other types), padding to 4, then fields `u16 length, u8 id,
//!   u8 kind, value, padding to 4`. Field id 2 (kind 0x40) is the 20-byte
//!   resource id naming the ResourceData file; id 0x12 is the file size;
//!   ids 0x0F..0x11 FILETIMEs; id 0x0C the path again.
//!
//! A ResourceData file decrypted is: 8 bytes (`03 00 00 00 02 00 00 00`),
//! u32 length of the security descriptor, 8 zero bytes, the file's
//! self-relative security descriptor, 8 bytes (`01 00 …`), u64 length of
//! the data, 4 bytes, the original bytes, then optional extra streams
//! (`:Zone.Identifier:$DATA`) that we do not restore.
//!
//! Layout learnt from the maldump and defender-dump samples (two real
//! Defender records) and the ERNW/maldump structure notes. This is NOT a
//! reader for registry or process items (only `file` items are entries),
//! and it does not read the extra streams.

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

use super::util::{self, Cursor};
use super::{check_vendor, QuarantineEntry, QuarantineReader, Scan, Unreadable, Vendor};

/// The RC4 key of Defender's quarantine (from `mpengine.dll`; a public
/// fact, the same in every Defender since Windows 8).
pub const RC4_KEY: [u8; 256] = [
    0x1E, 0x87, 0x78, 0x1B, 0x8D, 0xBA, 0xA8, 0x44, 0xCE, 0x69, 0x70, 0x2C, 0x0C, 0x78, 0xB7, 0x86,
    0xA3, 0xF6, 0x23, 0xB7, 0x38, 0xF5, 0xED, 0xF9, 0xAF, 0x83, 0x53, 0x0F, 0xB3, 0xFC, 0x54, 0xFA,
    0xA2, 0x1E, 0xB9, 0xCF, 0x13, 0x31, 0xFD, 0x0F, 0x0D, 0xA9, 0x54, 0xF6, 0x87, 0xCB, 0x9E, 0x18,
    0x27, 0x96, 0x97, 0x90, 0x0E, 0x53, 0xFB, 0x31, 0x7C, 0x9C, 0xBC, 0xE4, 0x8E, 0x23, 0xD0, 0x53,
    0x71, 0xEC, 0xC1, 0x59, 0x51, 0xB8, 0xF3, 0x64, 0x9D, 0x7C, 0xA3, 0x3E, 0xD6, 0x8D, 0xC9, 0x04,
    0x7E, 0x82, 0xC9, 0xBA, 0xAD, 0x97, 0x99, 0xD0, 0xD4, 0x58, 0xCB, 0x84, 0x7C, 0xA9, 0xFF, 0xBE,
    0x3C, 0x8A, 0x77, 0x52, 0x33, 0x55, 0x7D, 0xDE, 0x13, 0xA8, 0xB1, 0x40, 0x87, 0xCC, 0x1B, 0xC8,
    0xF1, 0x0F, 0x6E, 0xCD, 0xD0, 0x83, 0xA9, 0x59, 0xCF, 0xF8, 0x4A, 0x9D, 0x1D, 0x50, 0x75, 0x5E,
    0x3E, 0x19, 0x18, 0x18, 0xAF, 0x23, 0xE2, 0x29, 0x35, 0x58, 0x76, 0x6D, 0x2C, 0x07, 0xE2, 0x57,
    0x12, 0xB2, 0xCA, 0x0B, 0x53, 0x5E, 0xD8, 0xF6, 0xC5, 0x6C, 0xE7, 0x3D, 0x24, 0xBD, 0xD0, 0x29,
    0x17, 0x71, 0x86, 0x1A, 0x54, 0xB4, 0xC2, 0x85, 0xA9, 0xA3, 0xDB, 0x7A, 0xCA, 0x6D, 0x22, 0x4A,
    0xEA, 0xCD, 0x62, 0x1D, 0xB9, 0xF2, 0xA2, 0x2E, 0xD1, 0xE9, 0xE1, 0x1D, 0x75, 0xBE, 0xD7, 0xDC,
    0x0E, 0xCB, 0x0A, 0x8E, 0x68, 0xA2, 0xFF, 0x12, 0x63, 0x40, 0x8D, 0xC8, 0x08, 0xDF, 0xFD, 0x16,
    0x4B, 0x11, 0x67, 0x74, 0xCD, 0x0B, 0x9B, 0x8D, 0x05, 0x41, 0x1E, 0xD6, 0x26, 0x2E, 0x42, 0x9B,
    0xA4, 0x95, 0x67, 0x6B, 0x83, 0x98, 0xDB, 0x2F, 0x35, 0xD3, 0xC1, 0xB9, 0xCE, 0xD5, 0x26, 0x36,
    0xF2, 0x76, 0x5E, 0x1A, 0x95, 0xCB, 0x7C, 0xA4, 0xC3, 0xDD, 0xAB, 0xDD, 0xBF, 0xF3, 0x82, 0x53,
];

/// Header magic: the first 16 bytes of a decrypted Entries file.
const ENTRY_MAGIC: [u8; 16] = [
    0xDB, 0xE8, 0xC5, 0x01, 0x01, 0x00, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0,
];
const HEADER_LEN: usize = 0x3C;
/// An Entries file is a few hundred bytes; 1 MiB refuses a crafted one.
const MAX_ENTRY_FILE: u64 = 1 << 20;
/// Items per Entries file and strings per section 1: real ones have 1–3.
const MAX_ITEMS: u32 = 1024;
/// Field kinds ([`Field::kind`]) and ids seen in real records.
const KIND_HASH: u8 = 0x40;
const ID_RESOURCE: u8 = 0x02;
const ID_SIZE: u8 = 0x12;

/// Where Defender keeps its quarantine. Microsoft Security Essentials and
/// Forefront (the same engine, also on XP) used `Microsoft Antimalware`;
/// that their records are this format is an assumption, untested.
const LOCATIONS: &[&str] = &[
    r"ProgramData\Microsoft\Windows Defender\Quarantine",
    r"ProgramData\Microsoft\Microsoft Antimalware\Quarantine",
    r"Documents and Settings\All Users\Application Data\Microsoft\Microsoft Antimalware\Quarantine",
];

/// One field of an item: raw, so a record re-encodes byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub id: u8,
    pub kind: u8,
    pub value: Vec<u8>,
}

/// One item (a file, registry key …) of an Entries record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// As stored, with its `\\?\` prefix.
    pub path: String,
    /// `file` for files.
    pub kind: String,
    pub fields: Vec<Field>,
}

impl Item {
    /// The ResourceData name (40 upper-case hex digits) of a file item.
    pub fn resource_id(&self) -> Option<String> {
        self.fields
            .iter()
            .find(|f| f.id == ID_RESOURCE && f.kind == KIND_HASH && f.value.len() == 20)
            .map(|f| util::hex(&f.value).to_uppercase())
    }

    /// The size the record gives for a file item.
    pub fn size(&self) -> Option<u64> {
        let f = self.fields.iter().find(|f| f.id == ID_SIZE)?;
        Some(u64::from_le_bytes(f.value.as_slice().try_into().ok()?))
    }
}

/// A decrypted `Entries\{GUID}` file, every byte accounted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFile {
    /// Header bytes 0x10..0x28 (zero in every sample).
    pub header_reserved: [u8; 24],
    /// Header bytes 0x30..0x3C, not understood.
    pub header_tail: [u8; 12],
    pub guid: [u8; 16],
    pub section1_unknown: [u8; 16],
    /// FILETIME of the detection.
    pub filetime: u64,
    pub id: u32,
    pub flags: [u16; 2],
    /// Detection name first.
    pub strings: Vec<String>,
    pub items: Vec<Item>,
}

impl EntryFile {
    /// The detection name.
    pub fn detection(&self) -> Option<&str> {
        self.strings
            .first()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
}

/// A decrypted ResourceData file, every byte accounted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceFile {
    pub prefix: [u8; 8],
    pub reserved: [u8; 8],
    pub security_descriptor: Vec<u8>,
    pub middle: [u8; 8],
    pub after_len: [u8; 4],
    pub data: Vec<u8>,
    /// Extra streams after the data, kept only for re-encoding.
    pub trailer: Vec<u8>,
}

fn crypt(data: &[u8]) -> Result<Vec<u8>> {
    let mut out = data.to_vec();
    util::rc4(&RC4_KEY, &mut out)?;
    Ok(out)
}

/// Parses an encrypted Entries file.
pub fn parse_entry(raw: &[u8]) -> Result<EntryFile> {
    if raw.len() < HEADER_LEN {
        bail!("{} bytes is shorter than the 60-byte header", raw.len());
    }
    let header = crypt(&raw[..HEADER_LEN])?;
    let mut h = Cursor::new(&header);
    if h.array::<16>()? != ENTRY_MAGIC {
        bail!("wrong magic: not a Defender Entries file (or not Defender's key)");
    }
    let header_reserved = h.array()?;
    let len1 = h.u32()? as usize;
    let len2 = h.u32()? as usize;
    let header_tail = h.array()?;
    let body = &raw[HEADER_LEN..];
    if len1.checked_add(len2) != Some(body.len()) {
        bail!(
            "header declares sections of {len1} + {len2} bytes, the file has {} after the header",
            body.len()
        );
    }
    let s1 = crypt(&body[..len1])?;
    let s2 = crypt(&body[len1..])?;

    let mut c = Cursor::new(&s1);
    let guid = c.array()?;
    let section1_unknown = c.array()?;
    let filetime = c.u64()?;
    let id = c.u32()?;
    let flags = [c.u16()?, c.u16()?];
    let n = c.u32()?;
    if n > MAX_ITEMS {
        bail!("section 1 declares {n} strings");
    }
    let mut strings = Vec::new();
    for _ in 0..n {
        strings.push(c.cstr().context("section 1")?);
    }
    if c.remaining() != 0 {
        bail!(
            "{} unexplained bytes after section 1's strings",
            c.remaining()
        );
    }

    let mut c = Cursor::new(&s2);
    let count = c.u32()?;
    if count > MAX_ITEMS {
        bail!("section 2 declares {count} items");
    }
    let mut offsets = Vec::new();
    for _ in 0..count {
        offsets.push(c.u32()? as usize);
    }
    let mut items = Vec::new();
    for (i, &off) in offsets.iter().enumerate() {
        let end = offsets.get(i + 1).copied().unwrap_or(s2.len());
        if off > end || end > s2.len() {
            bail!(
                "item {i} spans {off}..{end}, outside section 2 ({} bytes)",
                s2.len()
            );
        }
        items.push(parse_item(&s2[..end], off).with_context(|| format!("item {i}"))?);
    }
    Ok(EntryFile {
        header_reserved,
        header_tail,
        guid,
        section1_unknown,
        filetime,
        id,
        flags,
        strings,
        items,
    })
}

fn parse_item(section: &[u8], off: usize) -> Result<Item> {
    let mut c = Cursor::at(section, off)?;
    let path = c.utf16z()?;
    let nfields = c.u16()?;
    let kind = c.cstr()?;
    c.align(0, 4)?;
    let mut fields = Vec::new();
    for _ in 0..nfields {
        let len = c.u16()? as usize;
        let id = c.u8()?;
        let fkind = c.u8()?;
        let value = c.take(len)?.to_vec();
        // The last field of the last item may end the section unpadded.
        if c.remaining() > 0 {
            c.align(0, 4)?;
        }
        fields.push(Field {
            id,
            kind: fkind,
            value,
        });
    }
    Ok(Item { path, kind, fields })
}

/// Parses an encrypted ResourceData file.
pub fn parse_resource(raw: &[u8]) -> Result<ResourceFile> {
    let plain = crypt(raw)?;
    let mut c = Cursor::new(&plain);
    let prefix = c.array()?;
    let sd_len = c.u32()?;
    let reserved = c.array()?;
    let security_descriptor = c
        .take_len(u64::from(sd_len))
        .context("security descriptor")?
        .to_vec();
    let middle = c.array()?;
    let len = c.u64()?;
    util::check_declared("declared data length", len)?;
    let after_len = c.array()?;
    let data = c.take_len(len).context("data")?.to_vec();
    let trailer = c.rest().to_vec();
    Ok(ResourceFile {
        prefix,
        reserved,
        security_descriptor,
        middle,
        after_len,
        data,
        trailer,
    })
}

/// Encrypts an [`EntryFile`] the way Defender lays it out.
pub fn encode_entry(e: &EntryFile) -> Result<Vec<u8>> {
    let mut s1 = Vec::new();
    s1.extend_from_slice(&e.guid);
    s1.extend_from_slice(&e.section1_unknown);
    s1.extend_from_slice(&e.filetime.to_le_bytes());
    s1.extend_from_slice(&e.id.to_le_bytes());
    s1.extend_from_slice(&e.flags[0].to_le_bytes());
    s1.extend_from_slice(&e.flags[1].to_le_bytes());
    s1.extend_from_slice(&u32::try_from(e.strings.len())?.to_le_bytes());
    for s in &e.strings {
        if s.contains('\0') {
            bail!("string {s:?} contains NUL");
        }
        s1.extend_from_slice(s.as_bytes());
        s1.push(0);
    }

    let n = e.items.len();
    let mut body = Vec::new();
    let mut offsets = Vec::new();
    let table = 4 + 4 * n;
    for item in &e.items {
        offsets.push(u32::try_from(table + body.len())?);
        body.extend(util::to_utf16le(&item.path));
        body.extend_from_slice(&[0, 0]);
        body.extend_from_slice(&u16::try_from(item.fields.len())?.to_le_bytes());
        body.extend_from_slice(item.kind.as_bytes());
        body.push(0);
        pad4(&mut body, table);
        for f in &item.fields {
            body.extend_from_slice(&u16::try_from(f.value.len())?.to_le_bytes());
            body.push(f.id);
            body.push(f.kind);
            body.extend_from_slice(&f.value);
            pad4(&mut body, table);
        }
    }
    let mut s2 = Vec::new();
    s2.extend_from_slice(&u32::try_from(n)?.to_le_bytes());
    for o in offsets {
        s2.extend_from_slice(&o.to_le_bytes());
    }
    s2.extend(body);

    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(&ENTRY_MAGIC);
    header.extend_from_slice(&e.header_reserved);
    header.extend_from_slice(&u32::try_from(s1.len())?.to_le_bytes());
    header.extend_from_slice(&u32::try_from(s2.len())?.to_le_bytes());
    header.extend_from_slice(&e.header_tail);
    let mut out = crypt(&header)?;
    out.extend(crypt(&s1)?);
    out.extend(crypt(&s2)?);
    Ok(out)
}

fn pad4(buf: &mut Vec<u8>, base: usize) {
    while !(base + buf.len()).is_multiple_of(4) {
        buf.push(0);
    }
}

/// Encrypts a [`ResourceFile`].
pub fn encode_resource(r: &ResourceFile) -> Result<Vec<u8>> {
    let mut p = Vec::new();
    p.extend_from_slice(&r.prefix);
    p.extend_from_slice(&u32::try_from(r.security_descriptor.len())?.to_le_bytes());
    p.extend_from_slice(&r.reserved);
    p.extend_from_slice(&r.security_descriptor);
    p.extend_from_slice(&r.middle);
    p.extend_from_slice(&(r.data.len() as u64).to_le_bytes());
    p.extend_from_slice(&r.after_len);
    p.extend_from_slice(&r.data);
    p.extend_from_slice(&r.trailer);
    crypt(&p)
}

/// The two files of one Defender quarantine record, with their paths
/// relative to the `Quarantine` folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenRecord {
    /// `Entries\{GUID}`.
    pub entry_path: PathBuf,
    pub entry: Vec<u8>,
    /// `ResourceData\XX\<40 hex>`.
    pub resource_path: PathBuf,
    pub resource: Vec<u8>,
}

/// Test support (fixtures, victim disks): a Defender record of one file.
/// Ids are derived from the inputs, so the same arguments give the same
/// bytes; `filetime` is the detection time (FILETIME).
pub fn write_record(
    original_path: &str,
    detection: &str,
    content: &[u8],
    filetime: u64,
) -> Result<WrittenRecord> {
    if original_path.is_empty() || original_path.contains('\0') {
        bail!("original path is empty or has a NUL");
    }
    let digest = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(original_path.as_bytes());
        h.update([0]);
        h.update(content);
        h.finalize()
    };
    let mut resource_id = [0u8; 20];
    resource_id.copy_from_slice(&digest[..20]);
    // Real GUIDs start 80008A1B-0000-0000 (also the u32 id below); the
    // rest is ours.
    let mut guid = [0u8; 16];
    guid[..4].copy_from_slice(&0x8000_8A1Bu32.to_le_bytes());
    guid[8..].copy_from_slice(&digest[20..28]);
    let nt_path = if original_path.starts_with(r"\\") {
        original_path.to_string()
    } else {
        format!(r"\\?\{original_path}")
    };
    let mut win_path = util::to_utf16le(original_path);
    win_path.extend_from_slice(&[0, 0]);
    let ft = filetime.to_le_bytes().to_vec();
    let item = Item {
        path: nt_path,
        kind: "file".into(),
        fields: vec![
            Field {
                id: ID_RESOURCE,
                kind: KIND_HASH,
                value: resource_id.to_vec(),
            },
            Field {
                id: ID_SIZE,
                kind: 0x60,
                value: (content.len() as u64).to_le_bytes().to_vec(),
            },
            Field {
                id: 0x11,
                kind: 0x60,
                value: ft.clone(),
            },
            Field {
                id: 0x10,
                kind: 0x60,
                value: ft.clone(),
            },
            Field {
                id: 0x0F,
                kind: 0x60,
                value: ft,
            },
            // FILE_ATTRIBUTE_ARCHIVE, as in the samples.
            Field {
                id: 0x0A,
                kind: 0x30,
                value: 0x20u32.to_le_bytes().to_vec(),
            },
            Field {
                id: 0x0C,
                kind: 0x20,
                value: win_path,
            },
        ],
    };
    let entry = EntryFile {
        header_reserved: [0; 24],
        header_tail: [0, 0, 0, 0, 0, 0, 0, 0, 0xDB, 0xE8, 0xC5, 0x02],
        guid,
        section1_unknown: [0; 16],
        filetime,
        id: 0x8000_8A1B,
        flags: [0, 0],
        strings: vec![detection.to_string()],
        items: vec![item],
    };
    let resource = ResourceFile {
        prefix: [3, 0, 0, 0, 2, 0, 0, 0],
        reserved: [0; 8],
        security_descriptor: default_sd(),
        middle: [1, 0, 0, 0, 0, 0, 0, 0],
        after_len: [0; 4],
        data: content.to_vec(),
        trailer: Vec::new(),
    };
    let id_hex = util::hex(&resource_id).to_uppercase();
    Ok(WrittenRecord {
        entry_path: PathBuf::from("Entries").join(format!("{{{}}}", guid_string(&guid))),
        entry: encode_entry(&entry)?,
        resource_path: PathBuf::from("ResourceData")
            .join(&id_hex[..2])
            .join(&id_hex),
        resource: encode_resource(&resource)?,
    })
}

/// `{80008A1B-0000-0000-…}` spelling of a GUID (first three groups little-endian).
fn guid_string(g: &[u8; 16]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{}-{}",
        u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
        u16::from_le_bytes([g[4], g[5]]),
        u16::from_le_bytes([g[6], g[7]]),
        util::hex(&g[8..10]).to_uppercase(),
        util::hex(&g[10..]).to_uppercase()
    )
}

/// A self-relative security descriptor ([MS-DTYP] 2.4.6): owner
/// Administrators (S-1-5-32-544), group SYSTEM (S-1-5-18), a DACL granting
/// SYSTEM and Administrators full control — what a system file has.
fn default_sd() -> Vec<u8> {
    let sid_system: &[u8] = &[1, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0];
    let sid_admins: &[u8] = &[1, 2, 0, 0, 0, 0, 0, 5, 32, 0, 0, 0, 0x20, 2, 0, 0];
    let ace = |sid: &[u8]| {
        // ACCESS_ALLOWED_ACE, no flags, size, FILE_ALL_ACCESS (0x001F01FF).
        let mut a = vec![0u8, 0];
        a.extend_from_slice(&((8 + sid.len()) as u16).to_le_bytes());
        a.extend_from_slice(&0x001F_01FFu32.to_le_bytes());
        a.extend_from_slice(sid);
        a
    };
    let aces = [ace(sid_system), ace(sid_admins)].concat();
    let mut acl = vec![2u8, 0];
    acl.extend_from_slice(&((8 + aces.len()) as u16).to_le_bytes());
    acl.extend_from_slice(&2u16.to_le_bytes());
    acl.extend_from_slice(&[0, 0]);
    acl.extend(aces);
    let owner = 20u32;
    let group = owner + sid_admins.len() as u32;
    let dacl = group + sid_system.len() as u32;
    // Revision 1; SE_SELF_RELATIVE | SE_DACL_PRESENT.
    let mut sd = vec![1u8, 0];
    sd.extend_from_slice(&0x8004u16.to_le_bytes());
    for v in [owner, group, 0, dacl] {
        sd.extend_from_slice(&v.to_le_bytes());
    }
    sd.extend_from_slice(sid_admins);
    sd.extend_from_slice(sid_system);
    sd.extend(acl);
    sd
}

/// The Defender reader.
pub struct Defender;

impl QuarantineReader for Defender {
    fn vendor(&self) -> Vendor {
        Vendor::Defender
    }

    fn locations(&self) -> &'static [&'static str] {
        LOCATIONS
    }

    fn scan(&self, root: &Path) -> Scan {
        let mut scan = Scan::default();
        for q in util::resolve_all(root, LOCATIONS) {
            scan_folder(root, &q, &mut scan);
        }
        scan
    }

    fn extract(&self, root: &Path, entry: &QuarantineEntry) -> Result<Vec<u8>> {
        check_vendor(Vendor::Defender, entry)?;
        let path = util::under(root, &entry.record)?;
        let raw = util::read_record(&path)
            .with_context(|| format!("reading {}", entry.record.display()))?;
        let r = util::guarded(|| parse_resource(&raw))
            .with_context(|| format!("{}", entry.record.display()))?;
        util::verify(entry, &r.data)?;
        Ok(r.data)
    }
}

fn scan_folder(root: &Path, q: &Path, scan: &mut Scan) {
    let v = Vendor::Defender;
    let mut used = Vec::new();
    for dir in util::resolve(q, "Entries") {
        for f in util::files_in(v, root, &dir, |_| true, &mut scan.unreadable) {
            let parsed = util::read_capped(&f, MAX_ENTRY_FILE)
                .and_then(|raw| util::guarded(|| parse_entry(&raw)));
            let e = match parsed {
                Ok(e) => e,
                Err(e) => {
                    scan.unreadable
                        .push(Unreadable::new(v, root, &f, format!("{e:#}")));
                    continue;
                }
            };
            // One bad item (a missing resource) must not hide the others.
            for item in e.items.iter().filter(|i| i.kind == "file") {
                match read_item(root, q, &f, &e, item) {
                    Ok((entry, res)) => {
                        scan.entries.push(entry);
                        used.push(res);
                    }
                    Err(err) => scan.unreadable.push(Unreadable::new(
                        v,
                        root,
                        &f,
                        format!("item {:?}: {err:#}", item.path),
                    )),
                }
            }
        }
    }
    // Bytes without a description: restorable by hash, not by path.
    for dir in util::resolve(q, r"ResourceData\*") {
        for f in util::files_in(v, root, &dir, |_| true, &mut scan.unreadable) {
            if !used.contains(&f) {
                scan.unreadable.push(Unreadable::new(
                    v,
                    root,
                    &f,
                    "no Entries record names this resource: original path unknown".into(),
                ));
            }
        }
    }
}

fn read_item(
    root: &Path,
    q: &Path,
    f: &Path,
    e: &EntryFile,
    item: &Item,
) -> Result<(QuarantineEntry, PathBuf)> {
    let id = item
        .resource_id()
        .ok_or_else(|| anyhow!("file item has no resource id"))?;
    let res = find_resource(q, &id).ok_or_else(|| anyhow!("resource {id} is missing"))?;
    let raw =
        util::read_record(&res).with_context(|| format!("reading resource {}", res.display()))?;
    let r = util::guarded(|| parse_resource(&raw))
        .with_context(|| format!("resource {}", res.display()))?;
    if let Some(size) = item.size() {
        if size != r.data.len() as u64 {
            bail!(
                "entry says {size} bytes, resource {id} holds {}",
                r.data.len()
            );
        }
    }
    let entry = QuarantineEntry {
        vendor: Vendor::Defender,
        original_path: util::strip_nt_prefix(&item.path),
        detection: e.detection().map(str::to_string),
        quarantined_at: util::filetime_rfc3339(e.filetime),
        // The entry records a size (checked above) but no hash.
        sha256: None,
        size: Some(r.data.len() as u64),
        record: util::rel(root, &res),
        metadata: Some(util::rel(root, f)),
        locator: id,
    };
    Ok((entry, res))
}

/// `ResourceData\<first two>\<id>`, names compared without case.
fn find_resource(q: &Path, id: &str) -> Option<PathBuf> {
    for dir in util::resolve(q, &format!(r"ResourceData\{}", &id[..2])) {
        let rd = std::fs::read_dir(&dir).ok()?;
        for e in rd.flatten() {
            let is_file = e.file_type().map(|t| t.is_file()).unwrap_or(false);
            if is_file && e.file_name().to_string_lossy().eq_ignore_ascii_case(id) {
                return Some(e.path());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER32: &str = r"C:\Windows\System32\user32.dll";

    fn install(root: &Path, w: &WrittenRecord) {
        let q = root.join("ProgramData/Microsoft/Windows Defender/Quarantine");
        for (p, b) in [(&w.entry_path, &w.entry), (&w.resource_path, &w.resource)] {
            let p = q.join(p);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, b).expect("write");
        }
    }

    #[test]
    fn writer_round_trip() {
        let content = b"MZ\x90\x00 pretend user32".to_vec();
        let w = write_record(
            USER32,
            "Trojan:Win32/Wacatac.B!ml",
            &content,
            0x01d8_0c71_72d9_85da,
        )
        .expect("write");
        assert_eq!(
            w,
            write_record(
                USER32,
                "Trojan:Win32/Wacatac.B!ml",
                &content,
                0x01d8_0c71_72d9_85da
            )
            .expect("again")
        );
        let t = tempfile::tempdir().expect("tempdir");
        install(t.path(), &w);
        let s = Defender.scan(t.path());
        assert!(s.unreadable.is_empty(), "{:?}", s.unreadable);
        assert_eq!(s.entries.len(), 1);
        let e = &s.entries[0];
        assert_eq!(e.original_path, USER32);
        assert_eq!(e.detection.as_deref(), Some("Trojan:Win32/Wacatac.B!ml"));
        assert_eq!(e.quarantined_at.as_deref(), Some("2022-01-18T13:44:00Z"));
        assert_eq!(Defender.extract(t.path(), e).expect("extract"), content);
        let parsed = parse_entry(&w.entry).expect("parse");
        assert_eq!(encode_entry(&parsed).expect("encode"), w.entry);
    }

    #[test]
    fn malformed_entries_are_refused() {
        let w = write_record(USER32, "x", b"abc", 0x01d8_0000_0000_0000).expect("write");
        assert!(parse_entry(&w.entry[..30])
            .unwrap_err()
            .to_string()
            .contains("60-byte header"));
        let mut bad = w.entry.clone();
        bad[0] ^= 0xFF;
        assert!(parse_entry(&bad)
            .unwrap_err()
            .to_string()
            .contains("wrong magic"));
        let mut short = w.entry.clone();
        short.pop();
        assert!(format!("{:#}", parse_entry(&short).unwrap_err()).contains("declares sections"));
        // A huge declared data length in a resource.
        let mut plain = crypt(&w.resource).expect("dec");
        let sd_len = u32::from_le_bytes(plain[8..12].try_into().expect("4")) as usize;
        let len_at = 20 + sd_len + 8;
        plain[len_at..len_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = parse_resource(&crypt(&plain).expect("enc")).unwrap_err();
        assert!(format!("{e:#}").contains("more than"), "{e:#}");
        // A declared security descriptor past the end.
        let mut plain = crypt(&w.resource).expect("dec");
        plain[8..12].copy_from_slice(&0xFFFF_0000u32.to_le_bytes());
        assert!(format!(
            "{:#}",
            parse_resource(&crypt(&plain).expect("enc")).unwrap_err()
        )
        .contains("truncated"));
        assert!(parse_resource(&[]).is_err());
    }

    #[test]
    fn bad_record_is_reported_and_others_still_read() {
        let t = tempfile::tempdir().expect("tempdir");
        let w = write_record(USER32, "x", b"abc", 0x01d8_0000_0000_0000).expect("write");
        install(t.path(), &w);
        let entries = t
            .path()
            .join("ProgramData/Microsoft/Windows Defender/Quarantine/Entries");
        std::fs::write(entries.join("{BAD}"), b"garbage").expect("w");
        let s = Defender.scan(t.path());
        assert_eq!(s.entries.len(), 1);
        assert_eq!(s.unreadable.len(), 1);
        assert!(s.unreadable[0].path.ends_with("{BAD}"));
        // A resource whose size changed since the scan is refused (the
        // record holds no hash, so same-size changes pass: see the doc).
        let res = t
            .path()
            .join("ProgramData/Microsoft/Windows Defender/Quarantine")
            .join(&w.resource_path);
        let other = write_record(USER32, "x", b"abcd", 0x01d8_0000_0000_0000).expect("write");
        std::fs::write(&res, &other.resource).expect("w");
        assert!(Defender.extract(t.path(), &s.entries[0]).is_err());
    }
}
