//! Registry transaction-log replay, in memory: recovers what Windows had
//! committed to a hive's `.LOG1`/`.LOG2` (or old-format `.LOG`) but not yet
//! written into the hive file itself.
//!
//! A Windows 8.1+ machine that crashed or lost power (the typical state after a
//! bad update) leaves its SYSTEM and SOFTWARE hives "dirty": the newest values
//! live only in the logs. Reading the base file alone can answer with data that
//! is minutes to an hour old. [`replay`] returns the recovered bytes plus notes
//! saying what was applied or ignored; [`open_hive`] does the same for a hive
//! file and the logs found beside it.
//!
//! This is NOT a writer: nothing here touches a file, and the recovered bytes
//! are never written back (Windows replays its own logs at the next boot; a
//! repair that edits a hive must refuse a dirty one, see `bcd.rs`). It is not
//! the self-healing Windows does on a damaged hive either: a log that does not
//! verify is ignored and noted, and damaged hive bins are left for the reader
//! (`winreg`) to reject.
//!
//! Every input is untrusted: sizes, counts and offsets are checked before use,
//! dirty pages must fall inside the hive bins data the log itself declares, the
//! recovered hive is capped at [`MAX_RECOVERED_LEN`], and every loop advances
//! by at least one 512-byte sector of the log.
//!
//! Format reference: Maxim Suhanov, "Windows registry file format
//! specification" (github.com/msuhanov/regf), sections "Base block", "Format of
//! transaction log files" (old and new format), "Dirty state of a hive" and
//! "Multiple transaction log files"; section names below refer to it.

use crate::winreg::Hive;
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};

/// Base block size in a primary file; hive bins start right after it (§ Base block).
pub const BASE_BLOCK_LEN: usize = 4096;
/// A log's sector: the base block copy fills the first one, log entries and
/// the dirty vector start at the second (§ Sector size and clustering factor:
/// always 512 as of Windows 8).
const SECTOR: usize = 512;
/// Largest hive we rebuild. Real SYSTEM/SOFTWARE hives stay far below this; a
/// hostile log must not make the rescue allocate gigabytes.
pub const MAX_RECOVERED_LEN: usize = 1 << 30;
/// Largest log file [`open_hive`] reads.
const MAX_LOG_LEN: u64 = 1 << 30;
/// Seed of the Marvin32 hashes in new-format log entries (§ Log entries,
/// note 3 prints it as the bytes 82 EF 4D 88 7A 4E 55 C5). Read as one
/// number in that order: low state word 0x7A4E55C5, high 0x82EF4D88. The
/// byte-swapped reading does not verify a single entry Windows wrote (checked
/// against the Windows 10 SYSTEM logs in the corpus).
pub const LOG_ENTRY_SEED: u64 = 0x82EF_4D88_7A4E_55C5;

// § Base block field offsets.
const OFF_PRIMARY_SEQ: usize = 0x04;
const OFF_SECONDARY_SEQ: usize = 0x08;
const OFF_TIMESTAMP: usize = 0x0C;
const OFF_FILE_TYPE: usize = 0x1C;
const OFF_BINS_SIZE: usize = 0x28;
const OFF_CLUSTERING: usize = 0x2C;
/// Windows 10 base block `Flags` (§ Base block, 144); only bit 0 travels in
/// log entries (§ Log entries, note 11).
const OFF_FLAGS: usize = 0x90;
const OFF_CHECKSUM: usize = 0x1FC;
/// Timestamp in the first hive bin's header, the backup of the base block's
/// (§ Hive bin, offset 20; § Old format, note 3).
const OFF_HBIN_TIMESTAMP: usize = BASE_BLOCK_LEN + 20;

// § Base block: file type. 0 primary; 1 old-format log (XP+); 2 old-format
// log (NT 3.1 to 2000); 6 new-format log (8.1+).
const TYPE_PRIMARY: u32 = 0;
const TYPE_LOG_OLD: u32 = 1;
const TYPE_LOG_OLD_2000: u32 = 2;
const TYPE_LOG_NEW: u32 = 6;

/// § Log entries: header is 40 bytes (signature, size, flags, sequence
/// number, hive bins data size, dirty pages count, hash-1, hash-2).
const ENTRY_HEADER_LEN: usize = 40;

/// Marvin32 (Microsoft's keyed 32-bit-lane hash, as in .NET's `Marvin`),
/// returning the 64-bit state Windows stores in a log entry.
pub fn marvin32(seed: u64, data: &[u8]) -> u64 {
    fn mix(lo: &mut u32, hi: &mut u32) {
        *hi ^= *lo;
        *lo = lo.rotate_left(20);
        *lo = lo.wrapping_add(*hi);
        *hi = hi.rotate_left(9);
        *hi ^= *lo;
        *lo = lo.rotate_left(27);
        *lo = lo.wrapping_add(*hi);
        *hi = hi.rotate_left(19);
    }
    let mut lo = seed as u32;
    let mut hi = (seed >> 32) as u32;
    let mut blocks = data.chunks_exact(4);
    for b in &mut blocks {
        lo = lo.wrapping_add(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        mix(&mut lo, &mut hi);
    }
    // The 0-3 trailing bytes, then a 0x80 terminator byte, as one LE word.
    let fin = blocks
        .remainder()
        .iter()
        .rev()
        .fold(0x80u32, |acc, &b| (acc << 8) | u32::from(b));
    lo = lo.wrapping_add(fin);
    mix(&mut lo, &mut hi);
    mix(&mut lo, &mut hi);
    (u64::from(hi) << 32) | u64::from(lo)
}

/// XOR-32 of the first 508 bytes, as stored at 0x1FC (§ Base block, note 2);
/// Windows stores 0 as 1 and 0xFFFFFFFF as 0xFFFFFFFE. `None` if `b` is
/// shorter than 508 bytes.
pub fn base_block_checksum(b: &[u8]) -> Option<u32> {
    let sum = b.get(..OFF_CHECKSUM)?.chunks_exact(4).fold(0u32, |s, c| {
        s ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]])
    });
    Some(match sum {
        0 => 1,
        u32::MAX => u32::MAX - 1,
        s => s,
    })
}

/// Recomputes and stores the base block checksum of `b` (at least 512 bytes).
pub(crate) fn fix_checksum(b: &mut [u8]) {
    if let Some(sum) = base_block_checksum(b) {
        b[OFF_CHECKSUM..OFF_CHECKSUM + 4].copy_from_slice(&sum.to_le_bytes());
    }
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(s.try_into().ok()?))
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// The base block fields replay decides on (§ Base block).
#[derive(Debug, Clone, Copy)]
struct BaseBlock {
    primary: u32,
    secondary: u32,
    timestamp: u64,
    file_type: u32,
    bins_size: u32,
    clustering: u32,
    checksum_ok: bool,
}

/// Reads the first sector of a primary file or log; `None` without a
/// "regf" signature.
fn base_block(b: &[u8]) -> Option<BaseBlock> {
    if b.get(0..4)? != b"regf" || b.len() < SECTOR {
        return None;
    }
    Some(BaseBlock {
        primary: le32(b, OFF_PRIMARY_SEQ)?,
        secondary: le32(b, OFF_SECONDARY_SEQ)?,
        timestamp: le64(b, OFF_TIMESTAMP)?,
        file_type: le32(b, OFF_FILE_TYPE)?,
        bins_size: le32(b, OFF_BINS_SIZE)?,
        clustering: le32(b, OFF_CLUSTERING)?,
        checksum_ok: base_block_checksum(b)? == le32(b, OFF_CHECKSUM)?,
    })
}

/// True when the hive needs recovery (§ Dirty state of a hive): a wrong base
/// block checksum, or primary and secondary sequence numbers that differ. Bytes
/// that are not a hive at all count as dirty.
pub fn is_dirty(hive: &[u8]) -> bool {
    match base_block(hive) {
        Some(bb) => !bb.checksum_ok || bb.primary != bb.secondary,
        None => true,
    }
}

/// A transaction log beside a hive: its file name (for the notes) and bytes.
#[derive(Debug, Clone, Copy)]
pub struct LogFile<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
}

/// What [`replay`] produced.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The hive as Windows would see it after recovery (the base hive
    /// unchanged when nothing applied).
    pub data: Vec<u8>,
    /// The base hive needed recovery.
    pub was_dirty: bool,
    /// Log entries (new format) or logs (old format) applied.
    pub applied: usize,
    /// Dirty pages written into `data`.
    pub pages: usize,
    /// One line per decision: what was applied, what was ignored and why.
    pub notes: Vec<String>,
}

/// One verified new-format log entry (§ Log entries).
#[derive(Debug)]
struct Entry {
    seq: u32,
    flags: u32,
    bins_size: u32,
    /// (offset in hive bins data, offset in the log, length).
    pages: Vec<(usize, usize, usize)>,
}

/// A new-format log: its base block and the entries that verified, in file
/// order; `stop` says why reading stopped early, if it did.
struct NewLog<'a> {
    name: &'a str,
    data: &'a [u8],
    base: BaseBlock,
    entries: Vec<Entry>,
    stop: Option<String>,
}

/// Reads the log entries of a new-format log, stopping at the first one that
/// does not verify (§ Log entries, note 8: only the entries before a bogus
/// one count).
fn read_entries(log: &[u8]) -> (Vec<Entry>, Option<String>) {
    let mut entries = Vec::new();
    let mut at = SECTOR;
    // Each pass moves `at` forward by an entry's size, itself at least one
    // sector, so this ends within len/512 passes.
    while at < log.len() {
        let n = entries.len() + 1;
        if log.get(at..at + 4) != Some(b"HvLE") {
            // End of the entries written together; what follows is zero fill
            // or remnants of older writes (§ Log entries, note 4).
            break;
        }
        match read_entry(log, at) {
            Ok((e, size)) => {
                entries.push(e);
                at += size;
            }
            Err(why) => return (entries, Some(format!("{why} at entry {n}"))),
        }
    }
    (entries, None)
}

fn read_entry(log: &[u8], at: usize) -> Result<(Entry, usize), String> {
    let field = |off: usize| le32(log, at + off).ok_or("truncated entry header");
    let size = field(4)? as usize;
    if size < ENTRY_HEADER_LEN || !size.is_multiple_of(SECTOR) {
        return Err(format!("bad entry size {size}"));
    }
    let body = log
        .get(at..at.saturating_add(size))
        .ok_or("entry runs past the end of the log (truncated)")?;
    let flags = field(8)?;
    let seq = field(12)?;
    let bins_size = field(16)?;
    let count = field(20)? as usize;
    // § Log entries, note 8: a hive bins data size not a multiple of 4096
    // makes the entry bogus.
    if bins_size == 0
        || !bins_size.is_multiple_of(4096)
        || bins_size as usize > MAX_RECOVERED_LEN - BASE_BLOCK_LEN
    {
        return Err(format!("bad hive bins data size {bins_size}"));
    }
    // § Log entries, notes 1-3: hash-1 covers everything after the header,
    // hash-2 the first 32 bytes (which include hash-1).
    let h1 = le64(body, 24).ok_or("truncated entry header")?;
    let h2 = le64(body, 32).ok_or("truncated entry header")?;
    if marvin32(LOG_ENTRY_SEED, &body[ENTRY_HEADER_LEN..]) != h1
        || marvin32(LOG_ENTRY_SEED, &body[..32]) != h2
    {
        return Err("hash mismatch".into());
    }
    // The hashes only prove the entry is intact, not that it is sane: a
    // crafted log can carry valid hashes, so every reference is checked too.
    let refs_end = count
        .checked_mul(8)
        .and_then(|r| r.checked_add(ENTRY_HEADER_LEN))
        .filter(|&e| e <= size)
        .ok_or_else(|| format!("{count} dirty pages do not fit the entry"))?;
    let mut pages = Vec::with_capacity(count);
    let mut data_at = refs_end;
    for i in 0..count {
        let off = le32(body, ENTRY_HEADER_LEN + 8 * i).ok_or("truncated page list")? as usize;
        let len = le32(body, ENTRY_HEADER_LEN + 8 * i + 4).ok_or("truncated page list")? as usize;
        if len == 0 || off.checked_add(len).is_none_or(|e| e > bins_size as usize) {
            return Err(format!(
                "dirty page {off:#x}+{len:#x} lies outside the hive bins data ({bins_size:#x} bytes)"
            ));
        }
        if data_at.checked_add(len).is_none_or(|e| e > size) {
            return Err("dirty pages run past the entry".into());
        }
        pages.push((off, at + data_at, len));
        data_at += len;
    }
    Ok((
        Entry {
            seq,
            flags,
            bins_size,
            pages,
        },
        size,
    ))
}

/// Grows `data` so the hive bins data holds `bins_size` bytes (§ Log entries,
/// note 9: the primary file is grown to the entry's size); never shrinks, as
/// padding after the last bin is allowed.
fn grow(data: &mut Vec<u8>, bins_size: usize) -> Result<(), String> {
    let want = BASE_BLOCK_LEN
        .checked_add(bins_size)
        .filter(|&w| w <= MAX_RECOVERED_LEN)
        .ok_or_else(|| format!("hive would grow past {MAX_RECOVERED_LEN} bytes"))?;
    if data.len() < want {
        data.resize(want, 0);
    }
    Ok(())
}

/// Replays the transaction logs `logs` onto the hive `hive`, in memory.
///
/// Returns the base hive unchanged (with a note) when it is clean or no log
/// applies. Fails only when the hive is not a hive at all and no log can
/// recover its base block.
pub fn replay(hive: &[u8], logs: &[LogFile]) -> Result<Replay> {
    ensure!(
        hive.len() >= BASE_BLOCK_LEN,
        "not a registry hive: {} bytes, shorter than the 4096-byte base block",
        hive.len()
    );
    ensure!(
        hive.len() <= MAX_RECOVERED_LEN,
        "hive is {} bytes, larger than any real hive",
        hive.len()
    );
    let primary = base_block(hive);
    let mut r = Replay {
        data: hive.to_vec(),
        was_dirty: is_dirty(hive),
        applied: 0,
        pages: 0,
        notes: Vec::new(),
    };
    if !r.was_dirty {
        let with_data = logs.iter().filter(|l| !l.data.is_empty()).count();
        r.notes.push(if with_data == 0 {
            "hive is clean".to_string()
        } else {
            // § Dirty state of a hive: entries in the logs of a clean hive
            // are ignored.
            "hive is clean; its logs are not needed".to_string()
        });
        return Ok(r);
    }
    let base_ok = primary.is_some_and(|b| b.checksum_ok);
    let mut new_logs = Vec::new();
    let mut old_logs = Vec::new();
    for log in logs {
        if log.data.is_empty() {
            r.notes.push(format!("{} is empty", log.name));
            continue;
        }
        let Some(bb) = base_block(log.data) else {
            r.notes
                .push(format!("{} ignored: no \"regf\" base block", log.name));
            continue;
        };
        // § Old format, base block note 2: a log is valid with a correct
        // checksum and equal sequence numbers.
        if !bb.checksum_ok {
            r.notes.push(format!(
                "{} ignored: base block checksum mismatch",
                log.name
            ));
            continue;
        }
        if bb.primary != bb.secondary {
            r.notes.push(format!(
                "{} ignored: its own sequence numbers differ ({} and {}), it was being written",
                log.name, bb.primary, bb.secondary
            ));
            continue;
        }
        match bb.file_type {
            TYPE_LOG_NEW => {
                let (entries, stop) = read_entries(log.data);
                new_logs.push(NewLog {
                    name: log.name,
                    data: log.data,
                    base: bb,
                    entries,
                    stop,
                });
            }
            TYPE_LOG_OLD | TYPE_LOG_OLD_2000 => old_logs.push((*log, bb)),
            t => r
                .notes
                .push(format!("{} ignored: unknown file type {t}", log.name)),
        }
    }
    if new_logs.is_empty() && old_logs.is_empty() {
        r.notes.push(
            "hive is dirty but no usable transaction log was found; reading the base file as is"
                .into(),
        );
        return Ok(r);
    }
    if !new_logs.is_empty() {
        for (log, _) in &old_logs {
            r.notes.push(format!(
                "{} ignored: old-format log beside new-format logs",
                log.name
            ));
        }
        replay_new(&mut r, primary.filter(|_| base_ok), new_logs);
    } else {
        replay_old(&mut r, primary.filter(|_| base_ok), &old_logs);
    }
    Ok(r)
}

/// § Multiple transaction log files, new format: with a valid primary base
/// block, logs apply in order of their sequence numbers, each continuing
/// where the previous stopped; with an invalid one, only the log with the
/// latest entries is used and its base block replaces the primary's.
fn replay_new(r: &mut Replay, primary: Option<BaseBlock>, mut logs: Vec<NewLog>) {
    for log in &logs {
        if let Some(why) = &log.stop {
            r.notes.push(format!(
                "{} read up to a bad entry: {why}; later entries ignored",
                log.name
            ));
        }
    }
    let start_min = match primary {
        Some(p) => p.secondary,
        None => {
            // Keep the log whose last verified entry is the newest.
            logs.sort_by_key(|l| l.entries.last().map(|e| e.seq));
            let Some(best) = logs.pop() else { return };
            for l in &logs {
                r.notes.push(format!(
                    "{} ignored: the hive's base block is damaged and {} holds later entries",
                    l.name, best.name
                ));
            }
            logs = vec![best];
            r.data[..SECTOR].copy_from_slice(&primary_base_from_log(logs[0].data));
            r.notes.push(format!(
                "hive base block checksum is wrong; restored it from {}",
                logs[0].name
            ));
            0
        }
    };
    logs.sort_by_key(|l| l.base.primary);
    let mut next: Option<u32> = None;
    let mut last: Option<(u32, u32)> = None; // (flags, bins size) of the last applied entry
    for log in &logs {
        if next.is_none() && log.base.primary < start_min {
            r.notes.push(format!(
                "{} ignored: its entries (from sequence {}) predate the hive (sequence {start_min})",
                log.name, log.base.primary
            ));
            continue;
        }
        let mut first_seq = None;
        let mut count: u32 = 0;
        let mut pages = 0;
        for (i, e) in log.entries.iter().enumerate() {
            let want = next.unwrap_or(log.base.primary);
            if e.seq < want {
                continue; // already applied, or an older write's remnant
            }
            if e.seq != want {
                r.notes.push(format!(
                    "{}: entry {} has sequence {} where {want} was expected; stopped there",
                    log.name,
                    i + 1,
                    e.seq
                ));
                break;
            }
            if let Err(why) = grow(&mut r.data, e.bins_size as usize) {
                r.notes.push(format!(
                    "{}: entry {}: {why}; stopped there",
                    log.name,
                    i + 1
                ));
                break;
            }
            for &(off, from, len) in &e.pages {
                // Bounds were checked against the entry's bins size, and
                // `grow` made the hive at least that large.
                let to = BASE_BLOCK_LEN + off;
                if let (Some(src), Some(dst)) =
                    (log.data.get(from..from + len), r.data.get_mut(to..to + len))
                {
                    dst.copy_from_slice(src);
                    pages += 1;
                }
            }
            first_seq.get_or_insert(e.seq);
            count += 1;
            next = Some(e.seq.wrapping_add(1));
            last = Some((e.flags, e.bins_size));
        }
        match first_seq {
            Some(first) => {
                r.notes.push(format!(
                    "applied {count} log entries from {} (sequence {first}..{}, {pages} dirty pages)",
                    log.name,
                    first.wrapping_add(count - 1)
                ));
                r.applied += count as usize;
                r.pages += pages;
            }
            None => r.notes.push(format!(
                "{}: no entry continues the hive's sequence; nothing applied",
                log.name
            )),
        }
    }
    if let (Some(next), Some((flags, bins))) = (next, last) {
        // § Log entries, notes 9 and 11: after recovery the base block
        // carries the last entry's sequence number, size and flag bit 0.
        let seq = next.wrapping_sub(1);
        let d = &mut r.data;
        put32(d, OFF_PRIMARY_SEQ, seq);
        put32(d, OFF_SECONDARY_SEQ, seq);
        put32(d, OFF_BINS_SIZE, bins);
        put32(d, OFF_FILE_TYPE, TYPE_PRIMARY);
        let f = le32(d, OFF_FLAGS).unwrap_or(0);
        put32(d, OFF_FLAGS, (f & !1) | (flags & 1));
        fix_checksum(d);
    }
}

/// The primary base block rebuilt from a log's copy (§ Old format, base
/// block note 4: file type set back to 0). `log` holds at least a sector:
/// [`base_block`] accepted it.
fn primary_base_from_log(log: &[u8]) -> [u8; SECTOR] {
    let mut b = [0u8; SECTOR];
    b.copy_from_slice(&log[..SECTOR]);
    put32(&mut b, OFF_FILE_TYPE, TYPE_PRIMARY);
    fix_checksum(&mut b);
    b
}

/// § Old format and § Multiple transaction log files, old format: a log
/// applies when its base block's last written timestamp equals the hive's
/// (or the first hive bin's, when the hive's base block is damaged); of
/// several applicable logs the one with the highest sequence number wins.
fn replay_old(r: &mut Replay, primary: Option<BaseBlock>, logs: &[(LogFile, BaseBlock)]) {
    let hive_ts = match primary {
        Some(p) => Some(p.timestamp),
        None => le64(&r.data, OFF_HBIN_TIMESTAMP),
    };
    let mut best: Option<&(LogFile, BaseBlock)> = None;
    for l in logs {
        if Some(l.1.timestamp) != hive_ts {
            r.notes.push(format!(
                "{} ignored: written for another state of the hive (timestamp differs)",
                l.0.name
            ));
            continue;
        }
        if best.is_none_or(|b| l.1.primary > b.1.primary) {
            best = Some(l);
        }
    }
    let Some((log, bb)) = best else {
        r.notes
            .push("hive is dirty but no log applies; reading the base file as is".into());
        return;
    };
    match apply_old(r, log, bb, primary) {
        Ok(pages) => {
            r.applied += 1;
            r.pages += pages;
            r.notes.push(format!(
                "applied {} (old format, sequence {}, {pages} dirty pages)",
                log.name, bb.primary
            ));
        }
        Err(why) => r.notes.push(format!("{} ignored: {why}", log.name)),
    }
}

fn apply_old(
    r: &mut Replay,
    log: &LogFile,
    bb: &BaseBlock,
    primary: Option<BaseBlock>,
) -> Result<usize, String> {
    // The dirty vector starts at the second sector, a sector being
    // clustering factor × 512 bytes on pre-Windows 8 disks.
    let sector = SECTOR * (bb.clustering.clamp(1, 8) as usize);
    let bins = bb.bins_size as usize;
    if !bins.is_multiple_of(SECTOR) {
        return Err(format!(
            "hive bins data size {bins} is not a multiple of 512"
        ));
    }
    if log.data.get(sector..sector + 4) != Some(b"DIRT") {
        return Err("no \"DIRT\" dirty vector".into());
    }
    // § Dirty vector: one bit per 512-byte page of hive bins data, least
    // significant bit first.
    let bits = bins / SECTOR;
    let bitmap_len = bits.div_ceil(8);
    let bitmap = log
        .data
        .get(sector + 4..sector + 4 + bitmap_len)
        .ok_or("dirty vector is truncated")?;
    // § Dirty pages: from the sector after the dirty vector, 512 bytes each,
    // in bit order.
    let pages_at = (sector + 4 + bitmap_len).next_multiple_of(SECTOR);
    let mut staged = Vec::new();
    for bit in (0..bits).filter(|i| bitmap[i / 8] & (1 << (i % 8)) != 0) {
        let from = pages_at + staged.len() * SECTOR;
        let page = log
            .data
            .get(from..from + SECTOR)
            .ok_or("dirty pages are truncated")?;
        staged.push((bit * SECTOR, page));
    }
    // All checks passed: only now touch the hive, so a bad log changes nothing.
    grow(&mut r.data, bins)?;
    for &(off, page) in &staged {
        r.data[BASE_BLOCK_LEN + off..BASE_BLOCK_LEN + off + SECTOR].copy_from_slice(page);
    }
    let d = &mut r.data;
    if primary.is_none() {
        // § Old format, base block note 4.
        d[..SECTOR].copy_from_slice(&log.data[..SECTOR]);
        r.notes.push(format!(
            "hive base block checksum is wrong; restored it from {}",
            log.name
        ));
    }
    let seq = primary.map_or(bb.primary, |p| p.primary.max(bb.primary));
    put32(d, OFF_PRIMARY_SEQ, seq);
    put32(d, OFF_SECONDARY_SEQ, seq);
    put32(d, OFF_BINS_SIZE, bb.bins_size);
    put32(d, OFF_FILE_TYPE, TYPE_PRIMARY);
    fix_checksum(d);
    Ok(staged.len())
}

/// True when `log` is a transaction log Windows could replay: a valid base
/// block of its own and at least one log entry that verifies (new format) or
/// one dirty page (old format). Zero-length, zero-filled or damaged logs are
/// "empty": Windows would not use them either.
pub fn log_holds_data(log: &[u8]) -> bool {
    let Some(bb) = base_block(log).filter(|b| b.checksum_ok && b.primary == b.secondary) else {
        return false;
    };
    match bb.file_type {
        TYPE_LOG_NEW => !read_entries(log).0.is_empty(),
        TYPE_LOG_OLD | TYPE_LOG_OLD_2000 => {
            let sector = SECTOR * (bb.clustering.clamp(1, 8) as usize);
            let bits = bb.bins_size as usize / SECTOR;
            log.get(sector..sector + 4) == Some(b"DIRT")
                && log
                    .get(sector + 4..)
                    .map(|b| &b[..b.len().min(bits.div_ceil(8))])
                    .is_some_and(|bitmap| bitmap.iter().any(|&x| x != 0))
        }
        _ => false,
    }
}

/// The transaction logs beside the hive file `path` (`NAME.LOG1`,
/// `NAME.LOG2`, `NAME.LOG`, matched case-insensitively since XP wrote
/// `system.LOG`), in that order.
pub fn find_logs(path: &Path) -> Result<Vec<PathBuf>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let stem = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("hive path {} has no file name", path.display()))?;
    let mut found: Vec<(usize, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        for (rank, ext) in ["LOG1", "LOG2", "LOG"].iter().enumerate() {
            let want = format!("{stem}.{ext}");
            if crate::winreg::eq_ci(name, &want) {
                found.push((rank, entry.path()));
            }
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Opens the hive file at `path`, replays the logs found beside it in memory
/// and parses the result. The notes say what was applied or ignored.
pub fn open_hive(path: &Path) -> Result<(Hive, Vec<String>)> {
    let read = |p: &Path| -> Result<Vec<u8>> {
        let len = std::fs::metadata(p)
            .with_context(|| format!("reading {}", p.display()))?
            .len();
        ensure!(
            len <= MAX_LOG_LEN,
            "{} is {len} bytes, larger than any real hive or log",
            p.display()
        );
        std::fs::read(p).with_context(|| format!("reading {}", p.display()))
    };
    let hive = read(path)?;
    let mut logs = Vec::new();
    for p in find_logs(path)? {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        logs.push((name, read(&p)?));
    }
    let files: Vec<LogFile> = logs
        .iter()
        .map(|(name, data)| LogFile { name, data })
        .collect();
    let r = replay(&hive, &files).with_context(|| format!("replaying {}", path.display()))?;
    let hive = Hive::from_bytes(r.data)
        .with_context(|| format!("parsing hive {} after log replay", path.display()))?;
    Ok((hive, r.notes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::winreg::tests::{corpus, corpus_xz};

    const SYS: &str = "registry/regipy-SYSTEM_B-win10";

    fn win10() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        (
            corpus_xz(&format!("{SYS}.xz")),
            corpus_xz(&format!("{SYS}.LOG1.xz")),
            corpus_xz(&format!("{SYS}.LOG2.xz")),
        )
    }

    /// A new-format log entry with correct hashes (§ Log entries).
    pub(crate) fn entry(seq: u32, bins: u32, pages: &[(u32, &[u8])]) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(b"HvLE");
        e.extend_from_slice(&[0; 4]); // size, below
        e.extend_from_slice(&0u32.to_le_bytes());
        e.extend_from_slice(&seq.to_le_bytes());
        e.extend_from_slice(&bins.to_le_bytes());
        e.extend_from_slice(&(pages.len() as u32).to_le_bytes());
        e.extend_from_slice(&[0; 16]);
        for (off, p) in pages {
            e.extend_from_slice(&off.to_le_bytes());
            e.extend_from_slice(&(p.len() as u32).to_le_bytes());
        }
        for (_, p) in pages {
            e.extend_from_slice(p);
        }
        e.resize(e.len().next_multiple_of(SECTOR), 0);
        let size = e.len() as u32;
        e[4..8].copy_from_slice(&size.to_le_bytes());
        let h1 = marvin32(LOG_ENTRY_SEED, &e[40..]);
        e[24..32].copy_from_slice(&h1.to_le_bytes());
        let h2 = marvin32(LOG_ENTRY_SEED, &e[..32]);
        e[32..40].copy_from_slice(&h2.to_le_bytes());
        e
    }

    /// A new-format log: the hive's first sector as its base block (file
    /// type 6, both sequence numbers `seq`), then `entries`.
    pub(crate) fn new_log(hive: &[u8], seq: u32, entries: &[Vec<u8>]) -> Vec<u8> {
        let mut log = hive[..SECTOR].to_vec();
        put32(&mut log, OFF_PRIMARY_SEQ, seq);
        put32(&mut log, OFF_SECONDARY_SEQ, seq);
        put32(&mut log, OFF_FILE_TYPE, TYPE_LOG_NEW);
        fix_checksum(&mut log);
        for e in entries {
            log.extend_from_slice(e);
        }
        log
    }

    /// A copy of `hive` marked dirty (sequence numbers 101 and 100).
    fn dirty(hive: &[u8]) -> Vec<u8> {
        let mut h = hive.to_vec();
        put32(&mut h, OFF_PRIMARY_SEQ, 101);
        put32(&mut h, OFF_SECONDARY_SEQ, 100);
        fix_checksum(&mut h);
        h
    }

    fn logs<'a>(l: &'a [(&'a str, Vec<u8>)]) -> Vec<LogFile<'a>> {
        l.iter()
            .map(|(name, data)| LogFile { name, data })
            .collect()
    }

    #[test]
    fn marvin32_known_answers() {
        // Test vectors published with .NET's Marvin (seed 0x004FB61A001BDBCC).
        let seed = 0x004F_B61A_001B_DBCC;
        assert_eq!(marvin32(seed, &[0xAF]), 0x48E7_3FC7_7D75_DDC1);
        assert_eq!(marvin32(seed, &[0xE7, 0x0F]), 0xB5F6_E1FC_485D_BFF8);
        assert_eq!(marvin32(seed, &[0x37, 0xF4, 0x95]), 0xF0B0_7C78_9B8C_F7E8);
    }

    #[test]
    fn corpus_log_entries_verify() {
        let (_, log1, log2) = win10();
        for (log, n, first, last) in [(&log1, 4, 2107, 2110), (&log2, 20, 2111, 2130)] {
            let (entries, stop) = read_entries(log);
            assert!(stop.is_none(), "{stop:?}");
            assert_eq!(entries.len(), n);
            assert_eq!(entries.first().unwrap().seq, first);
            assert_eq!(entries.last().unwrap().seq, last);
        }
    }

    #[test]
    fn replays_the_dirty_win10_system_hive() {
        let (hive, log1, log2) = win10();
        assert!(is_dirty(&hive));
        let files = [("SYSTEM.LOG1", log1), ("SYSTEM.LOG2", log2)];
        let r = replay(&hive, &logs(&files)).unwrap();
        assert!(r.was_dirty);
        assert_eq!(r.applied, 24, "{:#?}", r.notes);
        assert_eq!(r.pages, 315, "regipy recovers 315 dirty pages");
        assert!(
            r.notes
                .iter()
                .any(|n| n
                    .starts_with("applied 4 log entries from SYSTEM.LOG1 (sequence 2107..2110")),
            "{:#?}",
            r.notes
        );
        assert!(!is_dirty(&r.data));
        assert_eq!(le32(&r.data, OFF_PRIMARY_SEQ), Some(2130));
        let h = Hive::from_bytes(r.data.clone()).unwrap();
        assert!(!h.is_dirty());
        let name = h
            .value(
                "ControlSet001\\Control\\ComputerName\\ComputerName",
                "ComputerName",
            )
            .unwrap()
            .unwrap();
        assert_eq!(name.as_string().as_deref(), Some("DESKTOP-PM6C56D"));
        // The order logs are handed in does not matter: sequence numbers decide.
        let files = [
            ("SYSTEM.LOG2", files[1].1.clone()),
            ("SYSTEM.LOG1", files[0].1.clone()),
        ];
        assert!(replay(&hive, &logs(&files)).unwrap().data == r.data);
    }

    #[test]
    fn a_bad_log2_stops_after_log1() {
        let (hive, log1, mut log2) = win10();
        // Flip a byte inside LOG2's third entry: entries 1 and 2 still apply.
        let third = 348_160 + 100;
        log2[third] ^= 0xFF;
        let files = [("SYSTEM.LOG1", log1), ("SYSTEM.LOG2", log2)];
        let r = replay(&hive, &logs(&files)).unwrap();
        assert_eq!(r.applied, 6, "{:#?}", r.notes);
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("SYSTEM.LOG2") && n.contains("hash mismatch at entry 3")),
            "{:#?}",
            r.notes
        );
        Hive::from_bytes(r.data).unwrap();
    }

    #[test]
    fn clean_hive_and_missing_logs() {
        let hive = std::fs::read(corpus("registry/yarp-EmptyHive")).unwrap();
        let r = replay(&hive, &[]).unwrap();
        assert!(!r.was_dirty);
        assert!(r.data == hive);
        let d = dirty(&hive);
        let r = replay(&d, &[]).unwrap();
        assert!(r.was_dirty && r.applied == 0);
        assert!(r.data == d);
        assert!(r
            .notes
            .iter()
            .any(|n| n.contains("no usable transaction log")));
    }

    #[test]
    fn synthetic_entries_apply_in_sequence() {
        let hive = std::fs::read(corpus("registry/yarp-EmptyHive")).unwrap();
        let bins = le32(&hive, OFF_BINS_SIZE).unwrap();
        let d = dirty(&hive);
        let s = le32(&d, OFF_SECONDARY_SEQ).unwrap();
        // Two entries writing a marker into the last page of the bins data,
        // then a remnant of an older write that must not apply.
        let at = bins - 4096;
        let log = new_log(
            &d,
            s,
            &[
                entry(s, bins, &[(at, &[1; 4096])]),
                entry(s + 1, bins, &[(at, &[2; 4096])]),
                entry(s - 5, bins, &[(at, &[3; 4096])]),
            ],
        );
        let files = [("H.LOG1", log)];
        let r = replay(&d, &logs(&files)).unwrap();
        assert_eq!(r.applied, 2, "{:#?}", r.notes);
        let off = BASE_BLOCK_LEN + at as usize;
        assert!(r.data[off..off + 4096].iter().all(|&b| b == 2));
        assert_eq!(le32(&r.data, OFF_PRIMARY_SEQ), Some(s + 1));
        assert_eq!(le32(&r.data, OFF_SECONDARY_SEQ), Some(s + 1));
        // A log whose entries continue nothing the hive knows is ignored.
        let stale = new_log(&d, s - 10, &[entry(s - 10, bins, &[(at, &[9; 4096])])]);
        let files = [("H.LOG1", stale)];
        let r = replay(&d, &logs(&files)).unwrap();
        assert_eq!((r.applied, r.data == d), (0, true), "{:#?}", r.notes);
    }

    #[test]
    fn sequence_numbers_at_the_top_of_the_range() {
        // A hostile (or very old) hive at sequence u32::MAX: sequence numbers
        // are u32 and wrap, so 0 continues u32::MAX; nothing overflows.
        let hive = std::fs::read(corpus("registry/yarp-EmptyHive")).unwrap();
        let bins = le32(&hive, OFF_BINS_SIZE).unwrap();
        let mut d = hive.clone();
        put32(&mut d, OFF_PRIMARY_SEQ, u32::MAX);
        put32(&mut d, OFF_SECONDARY_SEQ, u32::MAX - 1);
        fix_checksum(&mut d);
        let at = bins - 4096;
        let log = new_log(
            &d,
            u32::MAX,
            &[
                entry(u32::MAX, bins, &[(at, &[1; 4096])]),
                entry(0, bins, &[(at, &[2; 4096])]),
            ],
        );
        let files = [("H.LOG1", log)];
        let r = replay(&d, &logs(&files)).unwrap();
        assert_eq!(r.applied, 2, "{:#?}", r.notes);
        assert_eq!(le32(&r.data, OFF_PRIMARY_SEQ), Some(0));
        let off = BASE_BLOCK_LEN + at as usize;
        assert!(r.data[off..off + 4096].iter().all(|&b| b == 2));
    }

    #[test]
    fn growing_entry_extends_the_hive() {
        let hive = std::fs::read(corpus("registry/yarp-EmptyHive")).unwrap();
        let bins = le32(&hive, OFF_BINS_SIZE).unwrap();
        let d = dirty(&hive);
        let s = le32(&d, OFF_SECONDARY_SEQ).unwrap();
        let mut bin = vec![0u8; 4096];
        bin[..4].copy_from_slice(b"hbin");
        bin[4..8].copy_from_slice(&bins.to_le_bytes());
        bin[8..12].copy_from_slice(&4096u32.to_le_bytes());
        bin[32..36].copy_from_slice(&4064i32.to_le_bytes()); // one free cell
        let log = new_log(&d, s, &[entry(s, bins + 4096, &[(bins, &bin)])]);
        let files = [("H.LOG1", log)];
        let r = replay(&d, &logs(&files)).unwrap();
        assert_eq!(r.applied, 1, "{:#?}", r.notes);
        assert_eq!(le32(&r.data, OFF_BINS_SIZE), Some(bins + 4096));
        assert!(r.data.len() >= BASE_BLOCK_LEN + bins as usize + 4096);
        Hive::from_bytes(r.data).unwrap();
    }

    #[test]
    fn hostile_logs_are_ignored_never_panic() {
        let hive = std::fs::read(corpus("registry/yarp-EmptyHive")).unwrap();
        let bins = le32(&hive, OFF_BINS_SIZE).unwrap();
        let d = dirty(&hive);
        let s = le32(&d, OFF_SECONDARY_SEQ).unwrap();
        let good = new_log(&d, s, &[entry(s, bins, &[(0, &[7; 4096])])]);
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        // Truncated at every interesting length.
        for cut in [1, 4, 100, 511, 512, 513, 552, 1024, good.len() - 1] {
            cases.push(("truncated", good[..cut].to_vec()));
        }
        // Wrong signatures.
        let mut b = good.clone();
        b[0] = b'x';
        cases.push(("no regf", b));
        let mut b = good.clone();
        b[SECTOR] = b'x';
        cases.push(("no HvLE", b));
        // Page outside the hive (valid hashes), at and beyond the declared size.
        for (off, len) in [(bins, 4096), (bins - 512, 4096), (u32::MAX - 10, 4096)] {
            let page = vec![0u8; len];
            cases.push((
                "outside",
                new_log(&d, s, &[entry(s, bins, &[(off, &page)])]),
            ));
        }
        // Absurd counts and sizes, re-hashed so only the sanity checks stop them.
        for (field, v) in [
            (20, u32::MAX),
            (20, 1000),
            (16, 4095),
            (16, !4095u32),
            (4, 0),
        ] {
            let mut e = entry(s, bins, &[(0, &[7; 4096])]);
            e[field..field + 4].copy_from_slice(&v.to_le_bytes());
            let h1 = marvin32(LOG_ENTRY_SEED, &e[40..]);
            e[24..32].copy_from_slice(&h1.to_le_bytes());
            let h2 = marvin32(LOG_ENTRY_SEED, &e[..32]);
            e[32..40].copy_from_slice(&h2.to_le_bytes());
            cases.push(("absurd", new_log(&d, s, &[e])));
        }
        // Bad hash.
        let mut b = good.clone();
        let n = b.len() - 1;
        b[n] ^= 1;
        cases.push(("hash", b));
        // Garbage and an old-format log with a dirty vector that lies.
        cases.push(("garbage", vec![0xA5; 8192]));
        let mut old = d[..SECTOR].to_vec();
        put32(&mut old, OFF_PRIMARY_SEQ, s + 1);
        put32(&mut old, OFF_SECONDARY_SEQ, s + 1);
        put32(&mut old, OFF_FILE_TYPE, TYPE_LOG_OLD);
        put32(&mut old, OFF_BINS_SIZE, !511u32);
        fix_checksum(&mut old);
        old.extend_from_slice(b"DIRT");
        old.extend_from_slice(&[0xFF; 600]);
        cases.push(("old", old));
        for (what, log) in cases {
            let files = [("H.LOG1", log)];
            let r = replay(&d, &logs(&files)).unwrap();
            assert_eq!(r.applied, 0, "{what}: {:#?}", r.notes);
            assert!(r.data == d, "{what}: the hive must be unchanged");
            assert!(!r.notes.is_empty(), "{what}");
        }
        assert!(replay(&[0; 100], &[]).is_err());
    }

    #[test]
    fn old_format_log_applies_dirty_pages() {
        let hive = std::fs::read(corpus("registry/yarp-EmptyHive")).unwrap();
        let bins = le32(&hive, OFF_BINS_SIZE).unwrap() as usize;
        let d = dirty(&hive);
        let p = le32(&d, OFF_PRIMARY_SEQ).unwrap();
        let mut log = d[..SECTOR].to_vec();
        put32(&mut log, OFF_SECONDARY_SEQ, p);
        put32(&mut log, OFF_FILE_TYPE, TYPE_LOG_OLD);
        fix_checksum(&mut log);
        log.extend_from_slice(b"DIRT");
        let mut bitmap = vec![0u8; (bins / SECTOR).div_ceil(8)];
        bitmap[0] = 0xF0; // pages 4..8: the second half of the first 4 KiB block
        log.extend_from_slice(&bitmap);
        log.resize(log.len().next_multiple_of(SECTOR), 0);
        log.extend_from_slice(&[0x5A; 2048]);
        let files = [("H.LOG", log.clone())];
        let r = replay(&d, &logs(&files)).unwrap();
        assert_eq!(r.applied, 1, "{:#?}", r.notes);
        assert_eq!(r.pages, 4);
        assert!(
            r.data[BASE_BLOCK_LEN..BASE_BLOCK_LEN + 2048]
                == d[BASE_BLOCK_LEN..BASE_BLOCK_LEN + 2048]
        );
        assert!(r.data[BASE_BLOCK_LEN + 2048..BASE_BLOCK_LEN + 4096]
            .iter()
            .all(|&b| b == 0x5A));
        assert!(!is_dirty(&r.data));
        // Another timestamp: written for another state of the hive.
        log[OFF_TIMESTAMP] ^= 1;
        fix_checksum(&mut log);
        let files = [("H.LOG", log)];
        let r = replay(&d, &logs(&files)).unwrap();
        assert_eq!(r.applied, 0, "{:#?}", r.notes);
    }

    #[test]
    fn finds_logs_case_insensitively() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "SYSTEM",
            "system.log1",
            "SYSTEM.LOG2",
            "System.Log",
            "SYSTEM.sav",
            "SOFTWARE.LOG1",
        ] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        let found: Vec<String> = find_logs(&dir.path().join("SYSTEM"))
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(found, ["system.log1", "SYSTEM.LOG2", "System.Log"]);
    }
}
