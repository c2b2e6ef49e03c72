//! Boot Configuration Data (BCD) store: read what the Windows Boot Manager
//! will start, and make the one edit a rescue needs — take the default entry
//! out of safe mode.
//!
//! A BCD store (`\EFI\Microsoft\Boot\BCD`, `\Boot\BCD`) is a registry hive:
//! `Objects\{GUID}\Elements\<type>\Element`. The boot manager object
//! [`BOOTMGR`] names the default entry in its `23000003` element; that entry's
//! `25000080` element is `safeboot` (what `bcdedit /set safeboot minimal`
//! writes, and what some remediation guides for a bad update told users to
//! set). [`clear_safeboot`] deletes that element key, nothing else.
//!
//! This is NOT a general hive writer and NOT bcdedit: it edits hive bytes in
//! memory (the engine does the vault copy, temp file, fsync and rename), it
//! never allocates cells (deleting only frees them), and it refuses a dirty
//! store or one whose transaction logs hold data, because Windows would
//! replay those logs over the edit. After editing it re-parses the result and
//! checks that only the element is gone.
//!
//! Device elements (`11000001`, `21000001`) are kept raw: their layout is
//! undocumented and nothing here decides on them.
//!
//! Format references: Maxim Suhanov, "Windows registry file format
//! specification" (github.com/msuhanov/regf) for cells, key nodes, subkey
//! lists and the base block; element type numbers as `bcdedit /enum /v`
//! prints them (and `BcdLibraryElementTypes`/`BcdOSLoaderElementTypes` in
//! Microsoft's BCD WMI documentation).

use crate::hivelog::{self, LogFile};
use crate::winreg::{Hive, RegData};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// The Windows Boot Manager object.
pub const BOOTMGR: &str = "{9dea862c-5cdd-4e70-acc1-f32b344d4795}";

// Element types (bcdedit names in comments).
/// Boot manager: `default`, the GUID of the default entry (REG_SZ).
const EL_DEFAULT: &str = "23000003";
/// `device` of an application (raw device blob).
const EL_APP_DEVICE: &str = "11000001";
/// `path` of an application: the winload path (REG_SZ).
const EL_APP_PATH: &str = "12000002";
/// `description` (REG_SZ).
const EL_DESCRIPTION: &str = "12000004";
/// `recoveryenabled` (boolean).
const EL_RECOVERY_ENABLED: &str = "16000009";
/// OS loader `osdevice` (raw device blob).
const EL_OS_DEVICE: &str = "21000001";
/// OS loader `safeboot` (integer: 0 minimal, 1 network, 2 dsrepair).
pub const EL_SAFEBOOT: &str = "25000080";
/// OS loader `safebootalternateshell` (boolean).
const EL_SAFEBOOT_ALT_SHELL: &str = "26000081";
/// OS loader `bootstatuspolicy` (integer).
const EL_BOOT_STATUS_POLICY: &str = "250000e0";

/// A cell offset of `0xFFFFFFFF` means "none" (regf § Key node).
const NO_CELL: u32 = u32::MAX;
const BASE_BLOCK_LEN: usize = 4096;

/// Why a BCD could not be read or edited; the engine matches on these to
/// decide what to tell the operator.
#[derive(Debug, Error)]
pub enum BcdError {
    #[error("not a readable BCD store: {0}")]
    Unreadable(String),
    #[error("the BCD store is dirty (its newest state is only in its transaction logs); defib does not edit it: clear the flag from Windows RE with `bcdedit /deletevalue {{default}} safeboot`, or let Windows start once and run defib again")]
    Dirty,
    #[error("{0} holds changes Windows would replay over an edit, so defib does not edit the BCD store: clear the flag from Windows RE with `bcdedit /deletevalue {{default}} safeboot`, or let Windows start once (it applies and empties the log) and run defib again")]
    LogsNotEmpty(String),
    #[error("the BCD store names no default boot entry")]
    NoDefaultEntry,
    #[error("the default boot entry {0} is not set to boot into safe mode")]
    SafebootNotSet(String),
    #[error("the BCD store has a structure this editor does not change: {0}")]
    Unsupported(String),
    #[error("the edited BCD store did not verify: {0}")]
    Verify(String),
}

/// `safeboot` values (`bcdedit /set safeboot minimal|network|dsrepair`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SafeBoot {
    Minimal,
    Network,
    DsRepair,
    Other(u64),
}

/// An OS loader entry as the boot manager sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootEntry {
    /// Object GUID with braces, as the key is named.
    pub id: String,
    pub description: Option<String>,
    /// `path`: the loader, e.g. `\Windows\system32\winload.efi`.
    pub path: Option<String>,
    pub safeboot: Option<SafeBoot>,
    pub safeboot_alternate_shell: Option<bool>,
    pub bootstatuspolicy: Option<u64>,
    pub recovery_enabled: Option<bool>,
    /// `device` and `osdevice`, raw (layout undocumented).
    pub device: Option<Vec<u8>>,
    pub osdevice: Option<Vec<u8>>,
}

/// What [`read`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BcdReport {
    /// The boot manager's `default` element.
    pub default_id: Option<String>,
    /// The default entry, when it exists.
    pub default_entry: Option<BootEntry>,
}

fn element_key(id: &str, element: &str) -> String {
    format!("Objects\\{id}\\Elements\\{element}")
}

fn element(hive: &Hive, id: &str, el: &str) -> Result<Option<RegData>, BcdError> {
    hive.value(&element_key(id, el), "Element")
        .map_err(|e| BcdError::Unreadable(format!("{e:#}")))
}

/// Integer elements are 8-byte little-endian REG_BINARY; accept shorter
/// binaries and DWORD/QWORD too, since hand-made stores differ.
fn as_int(d: &RegData) -> Option<u64> {
    match d {
        RegData::Binary(b) if !b.is_empty() && b.len() <= 8 => {
            let mut v = [0u8; 8];
            v[..b.len()].copy_from_slice(b);
            Some(u64::from_le_bytes(v))
        }
        _ => d.as_u64(),
    }
}

fn raw(d: RegData) -> Vec<u8> {
    match d {
        RegData::Binary(b) | RegData::Other(_, b) => b,
        other => format!("{other:?}").into_bytes(),
    }
}

/// Reads the OS loader entry `id`.
pub fn read_entry(hive: &Hive, id: &str) -> Result<BootEntry, BcdError> {
    let get = |el| element(hive, id, el);
    let text =
        |el| -> Result<Option<String>, BcdError> { Ok(get(el)?.and_then(|d| d.as_string())) };
    let int = |el| -> Result<Option<u64>, BcdError> { Ok(get(el)?.as_ref().and_then(as_int)) };
    Ok(BootEntry {
        id: id.to_string(),
        description: text(EL_DESCRIPTION)?,
        path: text(EL_APP_PATH)?,
        safeboot: int(EL_SAFEBOOT)?.map(|v| match v {
            0 => SafeBoot::Minimal,
            1 => SafeBoot::Network,
            2 => SafeBoot::DsRepair,
            v => SafeBoot::Other(v),
        }),
        safeboot_alternate_shell: int(EL_SAFEBOOT_ALT_SHELL)?.map(|v| v != 0),
        bootstatuspolicy: int(EL_BOOT_STATUS_POLICY)?,
        recovery_enabled: int(EL_RECOVERY_ENABLED)?.map(|v| v != 0),
        device: get(EL_APP_DEVICE)?.map(raw),
        osdevice: get(EL_OS_DEVICE)?.map(raw),
    })
}

/// Reads the boot manager's default entry from a BCD store's bytes.
pub fn read(bytes: &[u8]) -> Result<BcdReport, BcdError> {
    let hive =
        Hive::from_bytes(bytes.to_vec()).map_err(|e| BcdError::Unreadable(format!("{e:#}")))?;
    read_hive(&hive)
}

fn read_hive(hive: &Hive) -> Result<BcdReport, BcdError> {
    let default_id = element(hive, BOOTMGR, EL_DEFAULT)?.and_then(|d| d.as_string());
    let default_entry = match &default_id {
        Some(id)
            if hive
                .key_offset(&format!("Objects\\{id}"))
                .ok()
                .flatten()
                .is_some() =>
        {
            Some(read_entry(hive, id)?)
        }
        _ => None,
    };
    Ok(BcdReport {
        default_id,
        default_entry,
    })
}

/// Takes the default entry out of safe mode: returns the store's bytes with
/// the key `Objects\{default}\Elements\25000080` (and its `Element` value)
/// deleted, the base block's sequence numbers bumped and its checksum
/// recomputed. `logs` are the store's `.LOG`, `.LOG1`, `.LOG2` (pass what is
/// beside it; none is fine).
pub fn clear_safeboot(bytes: &[u8], logs: &[LogFile]) -> Result<Vec<u8>, BcdError> {
    if hivelog::is_dirty(bytes) {
        return Err(BcdError::Dirty);
    }
    if let Some(log) = logs.iter().find(|l| hivelog::log_holds_data(l.data)) {
        return Err(BcdError::LogsNotEmpty(log.name.to_string()));
    }
    let before =
        Hive::from_bytes(bytes.to_vec()).map_err(|e| BcdError::Unreadable(format!("{e:#}")))?;
    let report = read_hive(&before)?;
    let id = report.default_id.ok_or(BcdError::NoDefaultEntry)?;
    let entry = report.default_entry.ok_or(BcdError::NoDefaultEntry)?;
    if entry.safeboot.is_none() {
        return Err(BcdError::SafebootNotSet(id));
    }
    let parent_path = format!("Objects\\{id}\\Elements");
    let child_path = element_key(&id, EL_SAFEBOOT);
    let lookup = |p: &str| {
        before
            .key_offset(p)
            .map_err(|e| BcdError::Unreadable(format!("{e:#}")))?
            .ok_or_else(|| BcdError::Unreadable(format!("key {p} vanished")))
    };
    let parent = lookup(&parent_path)?;
    let child = lookup(&child_path)?;

    let mut out = bytes.to_vec();
    let mut ed = Editor {
        d: &mut out,
        freed: BTreeSet::new(),
    };
    ed.delete_leaf_key(parent, child)
        .map_err(BcdError::Unsupported)?;
    // regf § Base block: a completed write leaves primary = secondary; bump
    // both so Windows sees a new, clean state.
    for at in [4, 8] {
        let v = le32(&out, at).map_err(BcdError::Unsupported)?;
        out[at..at + 4].copy_from_slice(&v.wrapping_add(1).to_le_bytes());
    }
    hivelog::fix_checksum(&mut out);

    verify(&before, &out, &child_path)?;
    Ok(out)
}

/// Re-parses the edited store and checks that exactly `removed` is gone.
fn verify(before: &Hive, after: &[u8], removed: &str) -> Result<(), BcdError> {
    let after = Hive::from_bytes(after.to_vec())
        .map_err(|e| BcdError::Verify(format!("edited store does not parse: {e:#}")))?;
    if after.is_dirty() {
        return Err(BcdError::Verify("edited store is dirty".into()));
    }
    let mut want = dump(before).map_err(BcdError::Verify)?;
    let gone = removed.to_ascii_lowercase();
    if want.remove(&gone).is_none() {
        return Err(BcdError::Verify(format!("{removed} was not in the store")));
    }
    let got = dump(&after).map_err(BcdError::Verify)?;
    if got != want {
        let diff: Vec<&String> = want
            .keys()
            .chain(got.keys())
            .filter(|k| want.get(*k) != got.get(*k))
            .take(3)
            .collect();
        return Err(BcdError::Verify(format!("other keys changed: {diff:?}")));
    }
    Ok(())
}

type Dump = BTreeMap<String, Vec<(String, RegData)>>;

/// Every key (lowercased path) with its values. A BCD store holds a few
/// hundred keys; the limits stop a hostile store with a subkey loop.
fn dump(hive: &Hive) -> Result<Dump, String> {
    const MAX_KEYS: usize = 100_000;
    const MAX_DEPTH: usize = 64;
    let mut out = Dump::new();
    let mut stack = vec![(String::new(), 0usize)];
    let mut visited = 0usize;
    while let Some((path, depth)) = stack.pop() {
        visited += 1;
        if visited > MAX_KEYS || depth > MAX_DEPTH {
            return Err("store has too many or too deeply nested keys".into());
        }
        let values = hive.values(&path).map_err(|e| format!("{e:#}"))?;
        for sub in hive.subkeys(&path).map_err(|e| format!("{e:#}"))? {
            let p = if path.is_empty() {
                sub
            } else {
                format!("{path}\\{sub}")
            };
            stack.push((p, depth + 1));
        }
        out.insert(path.to_ascii_lowercase(), values);
    }
    Ok(out)
}

fn le32(b: &[u8], at: usize) -> Result<u32, String> {
    at.checked_add(4)
        .and_then(|end| b.get(at..end))
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| format!("hive structure too short at {at:#x}"))
}

/// In-place cell surgery on hive bytes. Offsets are regf cell offsets
/// (relative to the first hive bin); every access is bounds-checked, and a
/// cell is freed at most once.
struct Editor<'a> {
    d: &'a mut Vec<u8>,
    freed: BTreeSet<u32>,
}

impl Editor<'_> {
    /// File range of an allocated cell's data (after its 4-byte size).
    fn cell(&self, off: u32) -> Result<std::ops::Range<usize>, String> {
        if off == NO_CELL {
            return Err("reference to a missing cell".into());
        }
        let start = BASE_BLOCK_LEN
            .checked_add(off as usize)
            .ok_or("cell offset overflows")?;
        let size = le32(self.d, start)? as i32;
        // regf § Cell: a negative size marks an allocated cell.
        if size >= 0 {
            return Err(format!("cell {off:#x} is not allocated"));
        }
        let len = size.unsigned_abs() as usize;
        if len < 8 || start + len > self.d.len() {
            return Err(format!("cell {off:#x} has a bad size {len}"));
        }
        Ok(start + 4..start + len)
    }

    fn get32(&self, off: u32, field: usize) -> Result<u32, String> {
        let c = self.cell(off)?;
        if field + 4 > c.len() {
            return Err(format!("cell {off:#x} too short for +{field:#x}"));
        }
        le32(self.d, c.start + field)
    }

    fn set32(&mut self, off: u32, field: usize, v: u32) -> Result<(), String> {
        let c = self.cell(off)?;
        if field + 4 > c.len() {
            return Err(format!("cell {off:#x} too short for +{field:#x}"));
        }
        self.d[c.start + field..c.start + field + 4].copy_from_slice(&v.to_le_bytes());
        Ok(())
    }

    fn sig(&self, off: u32) -> Result<[u8; 2], String> {
        let c = self.cell(off)?;
        Ok([self.d[c.start], self.d[c.start + 1]])
    }

    /// Marks a cell free by making its size positive (regf § Cell). Merging
    /// with free neighbours is left to Windows, which does it on load.
    fn free(&mut self, off: u32) -> Result<(), String> {
        let c = self.cell(off)?;
        if !self.freed.insert(off) {
            return Err(format!("cell {off:#x} is referenced twice"));
        }
        let at = c.start - 4;
        let size = (c.end - at) as u32;
        self.d[at..at + 4].copy_from_slice(&size.to_le_bytes());
        Ok(())
    }

    /// Deletes the key node `child` (which must have no subkeys) from the
    /// key node `parent`: its values, their data, its class name, its
    /// reference to a security cell, the node itself, and its entry in the
    /// parent's subkeys list.
    fn delete_leaf_key(&mut self, parent: u32, child: u32) -> Result<(), String> {
        // regf § Key node (offsets within cell data): subkeys 0x14,
        // subkeys list 0x1C, values count 0x24, values list 0x28, security
        // 0x2C, class name 0x30.
        if self.sig(child)? != *b"nk" || self.sig(parent)? != *b"nk" {
            return Err("not a key node".into());
        }
        if self.get32(child, 0x14)? != 0 {
            return Err("the element key has subkeys".into());
        }
        // Plan every cell first, so a surprise leaves the bytes untouched.
        let mut to_free = vec![child];
        let values = self.get32(child, 0x24)?;
        let list = self.get32(child, 0x28)?;
        if values > 0 {
            if values > 64 {
                return Err(format!("the element key has {values} values"));
            }
            to_free.push(list);
            for i in 0..values as usize {
                let vk = self.get32(list, i * 4)?;
                if self.sig(vk)? != *b"vk" {
                    return Err("value cell is not \"vk\"".into());
                }
                to_free.push(vk);
                // regf § Key value: size 0x04 (top bit: data inline),
                // offset 0x08.
                let size = self.get32(vk, 0x04)?;
                if size & 0x8000_0000 == 0 && size > 0 {
                    let data = self.get32(vk, 0x08)?;
                    if self.sig(data)? == *b"db" && size > 16344 {
                        return Err("big-data value in an element key".into());
                    }
                    to_free.push(data);
                }
            }
        }
        let class = self.get32(child, 0x30)?;
        if class != NO_CELL && u16::from_le_bytes(self.class_len(child)?) > 0 {
            to_free.push(class);
        }
        for &c in &to_free {
            self.cell(c)?;
        }
        let sk = self.get32(child, 0x2C)?;
        let sk_refs = if sk != NO_CELL {
            if self.sig(sk)? != *b"sk" {
                return Err("security cell is not \"sk\"".into());
            }
            Some(self.get32(sk, 0x0C)?)
        } else {
            None
        };

        self.unlink_subkey(parent, child)?;
        let n = self.get32(parent, 0x14)?;
        self.set32(parent, 0x14, n.saturating_sub(1))?;
        if let Some(refs) = sk_refs {
            // regf § Key security: reference count at 0x0C; flink 0x04 and
            // blink 0x08 chain all sk cells.
            if refs > 1 {
                self.set32(sk, 0x0C, refs - 1)?;
            } else {
                // The last user is gone: unchain and free it. (An sk that
                // is alone in its chain is the root's, which a leaf key
                // cannot be the last user of; it is left as it is.)
                let (flink, blink) = (self.get32(sk, 0x04)?, self.get32(sk, 0x08)?);
                if flink != sk {
                    self.set32(blink, 0x04, flink)?;
                    self.set32(flink, 0x08, blink)?;
                    to_free.push(sk);
                }
            }
        }
        for c in to_free {
            self.free(c)?;
        }
        Ok(())
    }

    fn class_len(&self, nk: u32) -> Result<[u8; 2], String> {
        let c = self.cell(nk)?;
        self.d
            .get(c.start + 0x4A..c.start + 0x4C)
            .map(|s| [s[0], s[1]])
            .ok_or_else(|| "key node too short".into())
    }

    /// Removes `child` from `parent`'s subkeys list (regf § Subkeys list: lf
    /// and lh items are 8 bytes, li items 4, ri items point to leaves).
    /// Empty lists are freed and unhooked, as Windows does.
    fn unlink_subkey(&mut self, parent: u32, child: u32) -> Result<(), String> {
        let list = self.get32(parent, 0x1C)?;
        if self.sig(list)? == *b"ri" {
            let n = self.count(list)?;
            for i in 0..n {
                let leaf = self.get32(list, 4 + 4 * i)?;
                if self.remove_item(leaf, child)? {
                    if self.count(leaf)? == 0 {
                        self.remove_at(list, i, 4)?;
                        self.free(leaf)?;
                        if self.count(list)? == 0 {
                            self.free(list)?;
                            self.set32(parent, 0x1C, NO_CELL)?;
                        }
                    }
                    return Ok(());
                }
            }
            return Err("element key not in its parent's subkeys list".into());
        }
        if !self.remove_item(list, child)? {
            return Err("element key not in its parent's subkeys list".into());
        }
        if self.count(list)? == 0 {
            self.free(list)?;
            self.set32(parent, 0x1C, NO_CELL)?;
        }
        Ok(())
    }

    fn count(&self, list: u32) -> Result<usize, String> {
        let c = self.cell(list)?;
        Ok(usize::from(u16::from_le_bytes([
            self.d[c.start + 2],
            self.d[c.start + 3],
        ])))
    }

    /// Removes `child` from the leaf `list` (lf, lh or li); false if absent.
    fn remove_item(&mut self, list: u32, child: u32) -> Result<bool, String> {
        let stride = match &self.sig(list)? {
            b"lf" | b"lh" => 8,
            b"li" => 4,
            _ => return Err("unknown subkeys list type".into()),
        };
        for i in 0..self.count(list)? {
            if self.get32(list, 4 + stride * i)? == child {
                self.remove_at(list, i, stride)?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Deletes item `i` of a list: later items move down, the count drops.
    fn remove_at(&mut self, list: u32, i: usize, stride: usize) -> Result<(), String> {
        let c = self.cell(list)?;
        let n = self.count(list)?;
        let start = c.start + 4 + stride * i;
        let end = c.start + 4 + stride * n;
        if i >= n || end > c.end {
            return Err("subkeys list count exceeds its cell".into());
        }
        self.d.copy_within(start + stride..end, start);
        let new = (n - 1) as u16;
        self.d[c.start + 2..c.start + 4].copy_from_slice(&new.to_le_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_and_booleans_as_bcd_stores_them() {
        assert_eq!(
            as_int(&RegData::Binary(vec![2, 0, 0, 0, 0, 0, 0, 0])),
            Some(2)
        );
        assert_eq!(as_int(&RegData::Binary(vec![1])), Some(1));
        assert_eq!(as_int(&RegData::Binary(vec![])), None);
        assert_eq!(as_int(&RegData::Binary(vec![0; 9])), None);
        assert_eq!(as_int(&RegData::Dword(7)), Some(7));
    }

    #[test]
    fn garbage_is_a_typed_error() {
        assert!(matches!(read(&[]), Err(BcdError::Unreadable(_))));
        assert!(matches!(read(&[0xAB; 8192]), Err(BcdError::Unreadable(_))));
        assert!(matches!(clear_safeboot(&[], &[]), Err(BcdError::Dirty)));
    }

    #[test]
    fn editor_rejects_bad_cells() {
        // One hive bin with a single allocated 16-byte cell at offset 0x20
        // that is not a key node, then a free cell.
        let mut d = vec![0u8; BASE_BLOCK_LEN + 4096];
        d[BASE_BLOCK_LEN + 0x20..BASE_BLOCK_LEN + 0x24].copy_from_slice(&(-16i32).to_le_bytes());
        d[BASE_BLOCK_LEN + 0x24..BASE_BLOCK_LEN + 0x26].copy_from_slice(b"li");
        d[BASE_BLOCK_LEN + 0x26..BASE_BLOCK_LEN + 0x28].copy_from_slice(&500u16.to_le_bytes());
        d[BASE_BLOCK_LEN + 0x30..BASE_BLOCK_LEN + 0x34].copy_from_slice(&64i32.to_le_bytes());
        let mut ed = Editor {
            d: &mut d,
            freed: BTreeSet::new(),
        };
        assert!(ed.delete_leaf_key(0x20, 0x20).is_err()); // not "nk"
        assert!(ed.remove_item(0x20, 7).is_err()); // count past the cell
        assert!(ed.cell(0x30).is_err()); // free
        assert!(ed.cell(NO_CELL).is_err());
        assert!(ed.cell(0xFFFF_0000).is_err());
        assert!(ed.free(0x20).is_ok());
        assert!(ed.free(0x20).is_err()); // now free: never twice
    }
}
