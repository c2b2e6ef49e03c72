//! Offline reader for Windows registry hive files (`regf`), enough to look
//! up a key by path and read its values.
//!
//! This is not a general hive library: it never writes and ignores security
//! descriptors, class names and volatile keys. It does not replay transaction
//! logs itself: [`Hive::open`] reads a dirty hive as its base file
//! ([`Hive::is_dirty`] tells the caller so the report can say so), while
//! `hivelog::open_hive` first replays the `.LOG1`/`.LOG2`/`.LOG` beside it
//! in memory and then parses the result here (the dependency runs one way:
//! `hivelog` uses this reader, not the reverse).
//!
//! Why not the `nt-hive` crate: it asserts (panics) on a cell offset of
//! `0xFFFFFFFF` read from any subkey list, value list or value header, and in
//! the rescue a panic reboots the machine (init's panic hook). Hives come off
//! a broken PC and are untrusted, so every offset here is bounds-checked and
//! every failure is an error.
//!
//! Format reference: Maxim Suhanov, "Windows registry file format
//! specification" (github.com/msuhanov/regf, `Windows registry file format
//! specification.md`); section names below refer to it.

use anyhow::{bail, ensure, Context, Result};
use std::path::Path;

/// Base block ("regf" header) size; hive bins start right after it (§ Base block).
const BASE_BLOCK_LEN: usize = 4096;
/// Largest hive we read; Windows caps a SYSTEM hive far below this.
const MAX_HIVE_LEN: u64 = 2 << 30;
/// Largest data a single big-data segment holds (§ Big data).
const BIG_DATA_SEGMENT: usize = 16344;
/// `KEY_COMP_NAME`: the key name is Latin-1, not UTF-16LE (§ Key node).
const KEY_COMP_NAME: u16 = 0x0020;
/// `VALUE_COMP_NAME`: the value name is Latin-1, not UTF-16LE (§ Key value).
const VALUE_COMP_NAME: u16 = 0x0001;
/// Data-size flag: the data (at most 4 bytes) sits in the offset field (§ Key value).
const DATA_INLINE: u32 = 0x8000_0000;
/// Cell offsets of `0xFFFFFFFF` mean "none".
const NO_CELL: u32 = u32::MAX;

// Value types (winnt.h REG_*).
const REG_SZ: u32 = 1;
const REG_EXPAND_SZ: u32 = 2;
const REG_BINARY: u32 = 3;
const REG_DWORD: u32 = 4;
const REG_MULTI_SZ: u32 = 7;
const REG_QWORD: u32 = 11;

/// A hive file held in memory.
pub struct Hive {
    data: Vec<u8>,
}

/// A value's data, decoded by its registry type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegData {
    /// `REG_SZ`, up to the first NUL.
    Sz(String),
    /// `REG_DWORD` (little-endian, exactly 4 bytes).
    Dword(u32),
    /// `REG_QWORD` (exactly 8 bytes).
    Qword(u64),
    /// `REG_BINARY`.
    Binary(Vec<u8>),
    /// `REG_MULTI_SZ`, up to the first empty string.
    MultiSz(Vec<String>),
    /// Any other type (including `REG_EXPAND_SZ` and a `REG_DWORD` of the
    /// wrong size), raw.
    Other(u32, Vec<u8>),
}

impl RegData {
    /// The data as text: `REG_SZ`, or `REG_EXPAND_SZ` unexpanded.
    pub fn as_string(&self) -> Option<String> {
        match self {
            RegData::Sz(s) => Some(s.clone()),
            RegData::Other(REG_EXPAND_SZ, raw) => Some(utf16z(raw)),
            _ => None,
        }
    }

    /// The data as a number: `REG_DWORD`, `REG_QWORD`, or a `REG_SZ` of
    /// decimal digits (Windows keeps `CurrentBuild` as a string).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            RegData::Dword(v) => Some(u64::from(*v)),
            RegData::Qword(v) => Some(*v),
            RegData::Sz(s) => {
                let s = s.trim();
                if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                    s.parse().ok()
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    fn decode(kind: u32, raw: Vec<u8>) -> RegData {
        match kind {
            REG_SZ => RegData::Sz(utf16z(&raw)),
            REG_BINARY => RegData::Binary(raw),
            REG_DWORD => match <[u8; 4]>::try_from(raw.as_slice()) {
                Ok(b) => RegData::Dword(u32::from_le_bytes(b)),
                Err(_) => RegData::Other(kind, raw),
            },
            REG_QWORD => match <[u8; 8]>::try_from(raw.as_slice()) {
                Ok(b) => RegData::Qword(u64::from_le_bytes(b)),
                Err(_) => RegData::Other(kind, raw),
            },
            REG_MULTI_SZ => RegData::MultiSz(multi_sz(&raw)),
            _ => RegData::Other(kind, raw),
        }
    }
}

/// UTF-16LE up to the first NUL; unpaired surrogates become U+FFFD.
fn utf16z(raw: &[u8]) -> String {
    let units = raw
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0);
    char::decode_utf16(units)
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect()
}

/// NUL-separated UTF-16LE strings, ending at an empty one (or the data's end).
/// REG_MULTI_SZ: NUL-separated strings ended by an empty one. Empty
/// strings inside the list are kept: `PendingFileRenameOperations` pairs a
/// source with an empty destination to mean "delete", so stopping at the
/// first empty string would lose every pair after the first deletion. Only
/// the terminator (the trailing empty strings) is dropped.
fn multi_sz(raw: &[u8]) -> Vec<String> {
    let units: Vec<u16> = raw
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let mut parts: Vec<&[u16]> = units.split(|&u| u == 0).collect();
    while parts.last().is_some_and(|s| s.is_empty()) {
        parts.pop();
    }
    parts
        .into_iter()
        .map(|s| {
            char::decode_utf16(s.iter().copied())
                .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect()
        })
        .collect()
}

fn le16(b: &[u8], at: usize) -> Result<u16> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .with_context(|| format!("hive structure too short for a u16 at +{at:#x}"))
}

fn le32(b: &[u8], at: usize) -> Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .with_context(|| format!("hive structure too short for a u32 at +{at:#x}"))
}

/// Decodes a key or value name: Latin-1 when `compressed`, else UTF-16LE.
fn name(raw: &[u8], compressed: bool) -> String {
    if compressed {
        raw.iter().map(|&b| char::from(b)).collect()
    } else {
        let units = raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]));
        char::decode_utf16(units)
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect()
    }
}

/// Registry names compare case-insensitively (Windows upcases each
/// character; `char::to_uppercase` agrees for every name we look up).
pub(crate) fn eq_ci(a: &str, b: &str) -> bool {
    a.chars()
        .flat_map(char::to_uppercase)
        .eq(b.chars().flat_map(char::to_uppercase))
}

/// The parts of a key node (`nk`) we use.
struct KeyNode {
    /// Cell offset of this `nk`, relative to the first hive bin.
    offset: u32,
    name: String,
    subkeys_list: u32,
    values_count: u32,
    values_list: u32,
}

impl Hive {
    /// Reads the hive file at `path`.
    pub fn open(path: &Path) -> Result<Hive> {
        let len = std::fs::metadata(path)
            .with_context(|| format!("reading hive {}", path.display()))?
            .len();
        ensure!(
            len <= MAX_HIVE_LEN,
            "hive {} is {len} bytes, larger than any real hive",
            path.display()
        );
        let data =
            std::fs::read(path).with_context(|| format!("reading hive {}", path.display()))?;
        Hive::from_bytes(data).with_context(|| format!("parsing hive {}", path.display()))
    }

    /// The hive's bytes, as parsed.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// Checks the base block and root key of an in-memory hive.
    pub fn from_bytes(data: Vec<u8>) -> Result<Hive> {
        ensure!(
            data.len() >= BASE_BLOCK_LEN,
            "not a registry hive: {} bytes, shorter than the 4096-byte base block",
            data.len()
        );
        // § Base block: signature "regf" at 0.
        ensure!(
            &data[0..4] == b"regf",
            "not a registry hive: no \"regf\" signature"
        );
        // § Base block: XOR-32 of the first 508 bytes, stored at 508 (0x1FC);
        // 0 is stored as 1 and 0xFFFFFFFF as 0xFFFFFFFE.
        let mut sum = 0u32;
        for c in data[..0x1FC].chunks_exact(4) {
            sum ^= u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        sum = match sum {
            0 => 1,
            u32::MAX => u32::MAX - 1,
            s => s,
        };
        let stored = le32(&data, 0x1FC)?;
        ensure!(
            stored == sum,
            "hive base block checksum mismatch (stored {stored:#010x}, computed {sum:#010x}): damaged header"
        );
        // § Base block: major version at 0x14 (always 1).
        let major = le32(&data, 0x14)?;
        ensure!(major == 1, "unsupported hive major version {major}");
        // § Base block: hive bins data size at 0x28.
        let bins = le32(&data, 0x28)? as usize;
        ensure!(
            data.len() - BASE_BLOCK_LEN >= bins,
            "hive is truncated: header says {bins} bytes of hive bins, file has {}",
            data.len() - BASE_BLOCK_LEN
        );
        let hive = Hive { data };
        hive.key_node(hive.root_offset()?)
            .context("reading the root key")?;
        Ok(hive)
    }

    /// True when the primary and secondary sequence numbers differ (§ Base
    /// block, 0x4 and 0x8): Windows did not finish writing the hive and its
    /// `.LOG1`/`.LOG2` hold changes we did not replay.
    pub fn is_dirty(&self) -> bool {
        matches!((le32(&self.data, 4), le32(&self.data, 8)), (Ok(a), Ok(b)) if a != b)
    }

    /// Minor format version (§ Base block, 0x18): 3 = NT 4, 5 = XP and later.
    fn minor(&self) -> u32 {
        le32(&self.data, 0x18).unwrap_or(0)
    }

    fn root_offset(&self) -> Result<u32> {
        // § Base block: root cell offset at 0x24.
        le32(&self.data, 0x24)
    }

    /// The data of the allocated cell at `offset` (relative to the first hive
    /// bin), without its 4-byte size field (§ Cell).
    fn cell(&self, offset: u32) -> Result<&[u8]> {
        ensure!(offset != NO_CELL, "hive refers to a missing cell");
        let start = BASE_BLOCK_LEN
            .checked_add(offset as usize)
            .context("hive cell offset overflows")?;
        let size = self
            .data
            .get(start..start + 4)
            .map(|s| i32::from_le_bytes([s[0], s[1], s[2], s[3]]))
            .with_context(|| format!("hive cell offset {offset:#x} is past the end"))?;
        // A negative size marks an allocated cell; a positive one is free.
        ensure!(size < 0, "hive cell at {offset:#x} is not allocated");
        let len = size.unsigned_abs() as usize;
        ensure!(len >= 4, "hive cell at {offset:#x} has size {len}");
        self.data
            .get(start + 4..start + len)
            .with_context(|| format!("hive cell at {offset:#x} runs past the end"))
    }

    /// § Key node: "nk", flags 0x2, subkeys list 0x1C, values count 0x24,
    /// values list 0x28, name length 0x48, name at 0x4C.
    fn key_node(&self, offset: u32) -> Result<KeyNode> {
        let c = self.cell(offset)?;
        ensure!(
            c.get(0..2) == Some(b"nk"),
            "hive cell at {offset:#x} is not a key node"
        );
        let flags = le16(c, 2)?;
        let name_len = usize::from(le16(c, 0x48)?);
        let raw = c
            .get(0x4C..0x4C + name_len)
            .with_context(|| format!("key node at {offset:#x}: name runs past its cell"))?;
        Ok(KeyNode {
            offset,
            name: name(raw, flags & KEY_COMP_NAME != 0),
            subkeys_list: le32(c, 0x1C)?,
            values_count: le32(c, 0x24)?,
            values_list: le32(c, 0x28)?,
        })
    }

    /// Offsets of a key's subkey nodes (§ Subkeys list: lf/lh items are
    /// offset + hash, li items are offsets, ri items point to lf/lh/li lists).
    fn subkey_offsets(&self, key: &KeyNode) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        if key.subkeys_list == NO_CELL {
            return Ok(out);
        }
        let list = self.cell(key.subkeys_list)?;
        if list.get(0..2) == Some(b"ri") {
            for sub in self.list_items(list, 4)? {
                let leaf = self.cell(sub)?;
                // An index root points to leaves only; nesting would allow loops.
                ensure!(
                    leaf.get(0..2) != Some(b"ri"),
                    "hive has a nested index root"
                );
                out.extend(self.leaf_items(leaf)?);
            }
        } else {
            out = self.leaf_items(list)?;
        }
        Ok(out)
    }

    fn leaf_items(&self, list: &[u8]) -> Result<Vec<u32>> {
        match list.get(0..2) {
            Some(b"lf") | Some(b"lh") => self.list_items(list, 8),
            Some(b"li") => self.list_items(list, 4),
            _ => bail!("hive has an unknown subkeys list type"),
        }
    }

    /// The first u32 of each `stride`-byte item after a 4-byte list header
    /// (signature, u16 count).
    fn list_items(&self, list: &[u8], stride: usize) -> Result<Vec<u32>> {
        let count = usize::from(le16(list, 2)?);
        ensure!(
            4 + count * stride <= list.len(),
            "hive subkeys list says {count} items but its cell is {} bytes",
            list.len()
        );
        (0..count).map(|i| le32(list, 4 + i * stride)).collect()
    }

    /// Finds a key by backslash-separated path from the root.
    fn find_key(&self, path: &str) -> Result<Option<KeyNode>> {
        let mut key = self.key_node(self.root_offset()?)?;
        for part in path.split('\\').filter(|p| !p.is_empty()) {
            let mut found = None;
            for off in self.subkey_offsets(&key)? {
                let sub = self.key_node(off)?;
                if eq_ci(&sub.name, part) {
                    found = Some(sub);
                    break;
                }
            }
            match found {
                Some(sub) => key = sub,
                None => return Ok(None),
            }
        }
        Ok(Some(key))
    }

    /// Cell offset (relative to the first hive bin) of the key node at
    /// `path`, for code that edits the hive bytes (`bcd`).
    pub(crate) fn key_offset(&self, path: &str) -> Result<Option<u32>> {
        Ok(self.find_key(path)?.map(|k| k.offset))
    }

    /// Value under `key` (backslash-separated, case-insensitive, relative to
    /// the hive root) named `value` (`""` = the default value).
    pub fn value(&self, key: &str, value: &str) -> Result<Option<RegData>> {
        let Some(node) = self.find_key(key)? else {
            return Ok(None);
        };
        if node.values_count == 0 || node.values_list == NO_CELL {
            return Ok(None);
        }
        // § Values list: a cell of u32 offsets to "vk" cells.
        let list = self.cell(node.values_list)?;
        let count = node.values_count as usize;
        ensure!(
            count <= list.len() / 4,
            "key {key:?}: {count} values but the values list cell is {} bytes",
            list.len()
        );
        for i in 0..count {
            let vk = self.cell(le32(list, i * 4)?)?;
            // § Key value: "vk", name length 0x2, data size 0x4, data offset
            // 0x8, type 0xC, flags 0x10, name at 0x14.
            ensure!(
                vk.get(0..2) == Some(b"vk"),
                "key {key:?}: value cell is not \"vk\""
            );
            let name_len = usize::from(le16(vk, 2)?);
            let flags = le16(vk, 0x10)?;
            let raw_name = vk
                .get(0x14..0x14 + name_len)
                .with_context(|| format!("key {key:?}: value name runs past its cell"))?;
            if eq_ci(&name(raw_name, flags & VALUE_COMP_NAME != 0), value) {
                let kind = le32(vk, 0xC)?;
                let raw = self
                    .value_data(le32(vk, 4)?, le32(vk, 8)?, vk)
                    .with_context(|| format!("reading value {value:?} of key {key:?}"))?;
                return Ok(Some(RegData::decode(kind, raw)));
            }
        }
        Ok(None)
    }

    fn value_data(&self, size: u32, offset: u32, vk: &[u8]) -> Result<Vec<u8>> {
        let len = (size & !DATA_INLINE) as usize;
        if size & DATA_INLINE != 0 {
            ensure!(len <= 4, "inline value data of {len} bytes (at most 4 fit)");
            return Ok(vk
                .get(8..8 + len)
                .context("value header too short")?
                .to_vec());
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        let cell = self.cell(offset)?;
        // § Big data: from format 1.4 on, data over 16344 bytes is split into
        // segments listed by a "db" record (count 0x2, segments list 0x4).
        if len > BIG_DATA_SEGMENT && self.minor() >= 4 && cell.get(0..2) == Some(b"db") {
            let count = usize::from(le16(cell, 2)?);
            let list = self.cell(le32(cell, 4)?)?;
            ensure!(count <= list.len() / 4, "big data segment list too short");
            let mut out = Vec::with_capacity(len);
            for i in 0..count {
                if out.len() >= len {
                    break;
                }
                let seg = self.cell(le32(list, i * 4)?)?;
                let take = (len - out.len()).min(BIG_DATA_SEGMENT).min(seg.len());
                out.extend_from_slice(&seg[..take]);
            }
            ensure!(
                out.len() == len,
                "big data holds {} of {len} bytes",
                out.len()
            );
            return Ok(out);
        }
        Ok(cell
            .get(..len)
            .with_context(|| format!("value data of {len} bytes is larger than its cell"))?
            .to_vec())
    }

    /// Names and data of the values of `key`, in hive order (`""` is the
    /// default value). A missing key is an error.
    pub fn values(&self, key: &str) -> Result<Vec<(String, RegData)>> {
        let node = self
            .find_key(key)?
            .with_context(|| format!("registry key {key:?} not found"))?;
        if node.values_count == 0 || node.values_list == NO_CELL {
            return Ok(Vec::new());
        }
        let list = self.cell(node.values_list)?;
        let count = node.values_count as usize;
        ensure!(
            count <= list.len() / 4,
            "key {key:?}: {count} values but the values list cell is {} bytes",
            list.len()
        );
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let vk = self.cell(le32(list, i * 4)?)?;
            ensure!(
                vk.get(0..2) == Some(b"vk"),
                "key {key:?}: value cell is not \"vk\""
            );
            let name_len = usize::from(le16(vk, 2)?);
            let flags = le16(vk, 0x10)?;
            let raw_name = vk
                .get(0x14..0x14 + name_len)
                .with_context(|| format!("key {key:?}: value name runs past its cell"))?;
            let name = name(raw_name, flags & VALUE_COMP_NAME != 0);
            let raw = self
                .value_data(le32(vk, 4)?, le32(vk, 8)?, vk)
                .with_context(|| format!("reading value {name:?} of key {key:?}"))?;
            out.push((name, RegData::decode(le32(vk, 0xC)?, raw)));
        }
        Ok(out)
    }

    /// Names of the subkeys of `key`, in hive order. A missing key is an error.
    pub fn subkeys(&self, key: &str) -> Result<Vec<String>> {
        let node = self
            .find_key(key)?
            .with_context(|| format!("registry key {key:?} not found"))?;
        self.subkey_offsets(&node)?
            .into_iter()
            .map(|off| self.key_node(off).map(|k| k.name))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Read;
    use std::path::PathBuf;
    use std::process::Command;

    pub(crate) fn corpus(rel: &str) -> PathBuf {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/corpora")
            .join(rel);
        assert!(
            p.exists(),
            "corpus file {} is missing: the shared corpora must be present for these tests",
            p.display()
        );
        p
    }

    /// Decompresses an `.xz` corpus file into memory.
    pub(crate) fn corpus_xz(rel: &str) -> Vec<u8> {
        let f = std::fs::File::open(corpus(rel)).expect("open corpus");
        let mut out = Vec::new();
        liblzma::read::XzDecoder::new(f)
            .read_to_end(&mut out)
            .expect("decompress corpus");
        out
    }

    /// One `.reg` value line's right-hand side, e.g. `"text"` or `dword:0000157c`.
    pub(crate) enum V<'a> {
        Sz(&'a str),
        Dword(u32),
    }

    /// Builds a hive at `dest` from `yarp-EmptyHive` (a hive written by
    /// Windows) with `hivexregedit --merge`. `keys` are paths below the root
    /// with their values; parents are created first, as hivexregedit needs.
    pub(crate) fn make_hive(dest: &Path, keys: &[(&str, &[(&str, V)])]) {
        std::fs::copy(corpus("registry/yarp-EmptyHive"), dest).expect("copy empty hive");
        let mut perm = std::fs::metadata(dest).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        std::fs::set_permissions(dest, perm).unwrap();
        let prefix = "HKEY_LOCAL_MACHINE\\SOFTWARE";
        let mut reg = String::from("Windows Registry Editor Version 5.00\r\n\r\n");
        let mut made: Vec<String> = Vec::new();
        for (key, values) in keys {
            let parts: Vec<&str> = key.split('\\').collect();
            for n in 1..=parts.len() {
                let k = parts[..n].join("\\");
                if !made.contains(&k) || n == parts.len() {
                    reg.push_str(&format!("[{prefix}\\{k}]\r\n"));
                    if n == parts.len() {
                        for (name, v) in values.iter() {
                            let lhs = if name.is_empty() {
                                "@".to_string()
                            } else {
                                format!("\"{name}\"")
                            };
                            let rhs = match v {
                                V::Sz(s) => format!("\"{s}\""),
                                V::Dword(d) => format!("dword:{d:08x}"),
                            };
                            reg.push_str(&format!("{lhs}={rhs}\r\n"));
                        }
                    }
                    reg.push_str("\r\n");
                    made.push(k);
                }
            }
        }
        let reg_path = dest.with_extension("reg");
        std::fs::write(&reg_path, reg).unwrap();
        let out = Command::new("hivexregedit")
            .args(["--merge", "--prefix", prefix])
            .arg(dest)
            .arg(&reg_path)
            .output()
            .expect("hivexregedit is required for these tests: apt-get install libwin-hivex-perl");
        assert!(
            out.status.success(),
            "hivexregedit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    const CV: &str = "Microsoft\\Windows NT\\CurrentVersion";

    #[test]
    fn win7_system_computer_name() {
        let hive = Hive::from_bytes(corpus_xz("registry/regipy-SYSTEM-win7-x86.xz")).unwrap();
        assert!(!hive.is_dirty());
        let name = hive
            .value(
                "ControlSet001\\Control\\ComputerName\\ComputerName",
                "ComputerName",
            )
            .unwrap()
            .unwrap();
        assert_eq!(name.as_string().as_deref(), Some("WKS-WIN732BITA"));
        // Case-insensitive path and value name.
        let cur = hive.value("select", "current").unwrap().unwrap();
        assert_eq!(cur.as_u64(), Some(1));
        assert!(hive
            .subkeys("")
            .unwrap()
            .iter()
            .any(|k| k == "ControlSet001"));
    }

    #[test]
    fn win10_dirty_system_computer_name() {
        let hive = Hive::from_bytes(corpus_xz("registry/regipy-SYSTEM_B-win10.xz")).unwrap();
        assert!(
            hive.is_dirty(),
            "the Windows 10 SYSTEM corpus hive has unreplayed logs"
        );
        let cur = hive
            .value("Select", "Current")
            .unwrap()
            .unwrap()
            .as_u64()
            .unwrap();
        let key = format!("ControlSet{cur:03}\\Control\\ComputerName\\ComputerName");
        let name = hive.value(&key, "ComputerName").unwrap().unwrap();
        assert_eq!(name.as_string().as_deref(), Some("DESKTOP-PM6C56D"));
    }

    #[test]
    fn small_corpus_hives_open() {
        for f in ["yarp-EmptyHive", "minimal", "special", "nt-hive-testhive"] {
            let hive = Hive::open(&corpus(&format!("registry/{f}")))
                .unwrap_or_else(|e| panic!("{f}: {e:#}"));
            hive.subkeys("").unwrap_or_else(|e| panic!("{f}: {e:#}"));
        }
    }

    #[test]
    fn nt_hive_testhive_types_and_big_data() {
        // offreg.dll wrote these (nt-hive's testdata/offreg-testhive-writer.c).
        let hive = Hive::open(&corpus("registry/nt-hive-testhive")).unwrap();
        let keys = hive.subkeys("").unwrap();
        assert!(keys.iter().any(|k| k == "big-data-test"), "{keys:?}");
        for (name, len) in [("A", 16343), ("B", 16344), ("C", 16345)] {
            match hive.value("big-data-test", name).unwrap() {
                Some(RegData::Binary(b)) => assert_eq!(b.len(), len, "value {name}"),
                other => panic!("value {name}: {other:?}"),
            }
        }
        assert!(hive.value("no\\such\\key", "x").unwrap().is_none());
        assert!(hive.value("big-data-test", "nosuch").unwrap().is_none());
        assert!(hive.subkeys("no\\such").is_err());
    }

    #[test]
    fn garbage_and_truncated_hives_are_errors() {
        assert!(Hive::from_bytes(Vec::new()).is_err());
        assert!(Hive::from_bytes(vec![0xAB; 8192]).is_err());
        let mut fake = vec![0u8; 8192];
        fake[..4].copy_from_slice(b"regf");
        assert!(Hive::from_bytes(fake).is_err());
        let full = std::fs::read(corpus("registry/nt-hive-testhive")).unwrap();
        for cut in [100, 4096, 5000, full.len() / 2, full.len() - 1] {
            assert!(
                Hive::from_bytes(full[..cut].to_vec()).is_err(),
                "cut at {cut}"
            );
        }
        // Hostile cell offsets everywhere after the header: every lookup
        // must fail or answer, never panic.
        let win7 = corpus_xz("registry/regipy-SYSTEM-win7-x86.xz");
        for step in [0x1001usize, 0x777, 0x10_003] {
            let mut bad = win7.clone();
            let mut i = BASE_BLOCK_LEN + 0x20;
            while i + 4 <= bad.len() {
                bad[i..i + 4].copy_from_slice(&u32::MAX.to_le_bytes());
                i += step;
            }
            if let Ok(h) = Hive::from_bytes(bad) {
                let _ = h.value(
                    "ControlSet001\\Control\\ComputerName\\ComputerName",
                    "ComputerName",
                );
                let _ = h.subkeys("ControlSet001\\Services");
            }
        }
    }

    #[test]
    fn reads_values_merged_by_hivexregedit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("SOFTWARE");
        make_hive(
            &path,
            &[(
                CV,
                &[
                    ("ProductName", V::Sz("Microsoft Windows XP")),
                    ("CurrentBuild", V::Sz("2600")),
                    ("CSDVersion", V::Sz("Service Pack 3")),
                    ("UBR", V::Dword(5512)),
                    ("", V::Sz("default")),
                ],
            )],
        );
        let hive = Hive::open(&path).unwrap();
        assert!(!hive.is_dirty());
        let get = |v: &str| hive.value(CV, v).unwrap().unwrap();
        assert_eq!(
            get("ProductName"),
            RegData::Sz("Microsoft Windows XP".into())
        );
        assert_eq!(get("currentbuild").as_u64(), Some(2600));
        assert_eq!(
            get("CSDVersion").as_string().as_deref(),
            Some("Service Pack 3")
        );
        assert_eq!(get("UBR"), RegData::Dword(5512));
        assert_eq!(get("").as_string().as_deref(), Some("default"));
        assert_eq!(
            hive.subkeys("MICROSOFT").unwrap(),
            vec!["Windows NT".to_string()]
        );
    }

    #[test]
    fn regdata_helpers() {
        assert_eq!(RegData::Sz(" 19045 ".into()).as_u64(), Some(19045));
        assert_eq!(
            RegData::Sz("1.511.1 () (Obsolete data - do not use)".into()).as_u64(),
            None
        );
        assert_eq!(RegData::Qword(7).as_u64(), Some(7));
        assert_eq!(RegData::Binary(vec![1]).as_u64(), None);
        let raw: Vec<u8> = "a\0bc\0\0"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(
            RegData::decode(REG_MULTI_SZ, raw),
            RegData::MultiSz(vec!["a".into(), "bc".into()])
        );
        // A rename pair with an empty destination (a deletion) in the
        // middle: the pairs after it are kept.
        let raw: Vec<u8> = "\\??\\C:\\x\0\0\\??\\C:\\y\0!\\??\\C:\\z\0\0\0"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(
            RegData::decode(REG_MULTI_SZ, raw),
            RegData::MultiSz(vec![
                r"\??\C:\x".into(),
                "".into(),
                r"\??\C:\y".into(),
                r"!\??\C:\z".into()
            ])
        );
        let raw: Vec<u8> = "%SystemRoot%\0"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(
            RegData::decode(REG_EXPAND_SZ, raw).as_string().as_deref(),
            Some("%SystemRoot%")
        );
        assert!(matches!(
            RegData::decode(REG_DWORD, vec![1, 2]),
            RegData::Other(4, _)
        ));
    }
}
