//! `defib reports`: one row per rescue run, gathered from used sticks
//! (image files or devices) and folders of report files, for the admin
//! who has to say which of 400 PCs are back.
//!
//! Everything here is input from the field: a folder copied off sticks
//! can hold anything, and every string in a report was written on (or
//! about) a broken PC. So a source is read only as far as it is what it
//! claims to be: regular files only (no FIFOs, devices or links), at most
//! [`MAX_REPORT`] bytes, a defib report of a schema this code knows.
//! Anything else is a warning naming the file, counted but not tabled, and
//! one bad file or stick never stops the rest. Strings leave this module
//! through [`term`] (terminal) or [`csv_cell`] (CSV); JSON output is
//! serde's, faithful and escaped.
//!
//! This is not a report validator for the rescue's own use: it checks only
//! what the table needs, and reads fields loosely within a known schema.

use crate::image::UsbImage;
pub use crate::inspect::MAX_REPORT;
use anyhow::Result;
use defib_rescue::report::{Verdict, SCHEMA as REPORT_SCHEMA};
use serde::Serialize;
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    /// Where the report was found: `<source>:<file>`.
    pub source: String,
    pub run_id: String,
    pub finished: String,
    pub serial: String,
    pub uuid: String,
    pub computer: String,
    pub windows: String,
    pub verdict: String,
    /// Actions done (files moved, restored, placed).
    pub changes: usize,
    pub reason: String,
}

fn s(v: &Value, path: &[&str]) -> String {
    let mut cur = v;
    for k in path {
        cur = &cur[*k];
    }
    match cur {
        Value::String(x) => x.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

/// A row from one report.
pub fn row(source: String, r: &Value) -> Row {
    let wins = r["windows"].as_array().cloned().unwrap_or_default();
    let computer = wins
        .iter()
        .map(|w| s(w, &["identity", "computer_name"]))
        .filter(|x| !x.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let windows = wins
        .iter()
        .filter(|w| !w["identity"].is_null())
        .map(|w| {
            format!(
                "{} {}",
                s(w, &["identity", "product_name"]),
                s(w, &["identity", "build"])
            )
            .trim()
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("; ");
    let changes = wins
        .iter()
        .flat_map(|w| w["playbooks"].as_array().cloned().unwrap_or_default())
        .flat_map(|p| p["actions"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["status"] == "done")
        .count();
    let reason = wins
        .iter()
        .find(|w| w["verdict"] == r["verdict"])
        .map(|w| s(w, &["reason"]))
        .unwrap_or_default();
    Row {
        source,
        run_id: s(r, &["run_id"]),
        finished: s(r, &["finished"]),
        serial: s(r, &["machine", "product_serial"]),
        uuid: s(r, &["machine", "product_uuid"]),
        computer,
        windows,
        verdict: s(r, &["verdict"]),
        changes,
        reason,
    }
}

/// Whether `v` is a defib report this code can table; the error says why
/// not. Only what the table needs is required, so reports from older
/// defib versions of the same schema still list.
pub fn check_report(v: &Value) -> std::result::Result<(), String> {
    let Some(obj) = v.as_object() else {
        return Err("not a defib report (not a JSON object)".into());
    };
    match obj.get("schema").and_then(Value::as_u64) {
        Some(n) if n == u64::from(REPORT_SCHEMA) => {}
        Some(n) => {
            return Err(format!(
                "report schema {n}, this defib reads schema {REPORT_SCHEMA}; read it with the defib that wrote it"
            ))
        }
        None => return Err("not a defib report (no schema number)".into()),
    }
    for key in ["run_id", "finished"] {
        if !obj.get(key).is_some_and(Value::is_string) {
            return Err(format!("not a defib report (no {key:?} string)"));
        }
    }
    if !obj.get("machine").is_some_and(Value::is_object) {
        return Err("not a defib report (no \"machine\" object)".into());
    }
    if obj.get("windows").is_some_and(|w| !w.is_array()) {
        return Err("not a defib report (\"windows\" is not a list)".into());
    }
    match obj
        .get("verdict")
        .cloned()
        .map(serde_json::from_value::<Verdict>)
    {
        Some(Ok(_)) => Ok(()),
        _ => Err("not a defib report (no known \"verdict\")".into()),
    }
}

/// A BitLocker protector a run opened with a recovery password, which the
/// organisation should now rotate (`defib reports --keys-used`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyUse {
    pub computer_name: String,
    pub machine_uuid: String,
    pub machine_serial: String,
    /// The device the rescue saw the volume as (`nvme0n1p3`).
    pub volume: String,
    /// NTFS volume serial, 16 hex digits, as `blkid` shows it.
    pub ntfs_serial: String,
    /// `{GUID}` uppercase in braces, as `manage-bde -protectors -get` shows it.
    pub protector_id: String,
    pub key_source: String,
    pub run_id: String,
    pub finished: String,
    /// Where the report was found.
    pub source: String,
}

/// Key sources that mean a recovery password was disclosed to someone or
/// something outside the PC: typed, in a key file, a sealed key file, or
/// over the network. A startup key or a clear key is not a recovery
/// password.
pub const ROTATE_SOURCES: &[&str] = &["typed", "key-file", "sealed-key-file", "network"];

/// The recovery-password unlocks in one report.
pub fn key_uses(source: &str, r: &Value) -> Vec<KeyUse> {
    let wins = r["windows"].as_array().cloned().unwrap_or_default();
    wins.iter()
        .filter(|w| w["state"]["bitlocker"]["unlocked"] == true)
        .filter_map(|w| {
            let bl = &w["state"]["bitlocker"];
            let key_source = s(bl, &["key_source"]);
            if !ROTATE_SOURCES.contains(&key_source.as_str()) {
                return None;
            }
            let protector = s(bl, &["unlocked_with"]);
            let protector_id = defib_rescue::bitlocker::Guid::parse(&protector)
                .map(|g| g.windows_form())
                // Not a GUID: a hostile or damaged report; shown as it is
                // (escaped on output) rather than dropped.
                .unwrap_or(protector);
            Some(KeyUse {
                computer_name: s(w, &["identity", "computer_name"]),
                machine_uuid: s(r, &["machine", "product_uuid"]),
                machine_serial: s(r, &["machine", "product_serial"]),
                volume: s(w, &["volume"]),
                ntfs_serial: s(w, &["state", "ntfs_serial"]),
                protector_id,
                key_source,
                run_id: s(r, &["run_id"]),
                finished: s(r, &["finished"]),
                source: source.to_string(),
            })
        })
        .collect()
}

/// One line per machine and protector (the latest run that used it),
/// sorted by computer name.
pub fn dedup_key_uses(uses: &[KeyUse]) -> Vec<KeyUse> {
    let mut latest: std::collections::BTreeMap<(String, String, String), KeyUse> =
        Default::default();
    for u in uses {
        let k = (
            u.computer_name.clone(),
            u.machine_uuid.clone(),
            u.protector_id.clone(),
        );
        match latest.get(&k) {
            Some(old) if old.finished >= u.finished => {}
            _ => {
                latest.insert(k, u.clone());
            }
        }
    }
    latest.into_values().collect()
}

/// One machine's Secure Boot inventory (`defib reports --firmware`): is
/// it ready for the 2026 certificate rotation?
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct FirmwareRow {
    pub computer_name: String,
    pub machine_uuid: String,
    pub machine_serial: String,
    /// `on`, `off`, `setup-mode`, or empty when the report has none.
    pub secure_boot: String,
    /// `ready`, `needs-update`, `unknown`.
    pub ca_2023_ready: String,
    pub why: String,
    /// Subject CNs, `; ` between them.
    pub kek: String,
    pub db: String,
    pub dbx_entries: String,
    /// The first line of shim's SBAT level (`sbat,1,<date>`).
    pub sbat_level: String,
    pub finished: String,
    pub source: String,
}

/// The firmware row of a report from a UEFI boot; `None` for BIOS boots,
/// host runs and older reports (no inventory).
pub fn firmware_row(source: &str, r: &Value) -> Option<FirmwareRow> {
    let sb = &r["firmware"]["secure_boot"];
    if !sb.is_object() {
        return None;
    }
    let list = |k: &str| {
        sb[k]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default()
    };
    let secure_boot = if sb["setup_mode"] == true {
        "setup-mode"
    } else if sb["enabled"] == true {
        "on"
    } else if sb["enabled"] == false {
        "off"
    } else {
        ""
    };
    let computer_name = r["windows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| s(w, &["identity", "computer_name"]))
        .find(|x| !x.is_empty())
        .unwrap_or_default();
    Some(FirmwareRow {
        computer_name,
        machine_uuid: s(r, &["machine", "product_uuid"]),
        machine_serial: s(r, &["machine", "product_serial"]),
        secure_boot: secure_boot.into(),
        ca_2023_ready: s(sb, &["ca_2023_ready", "verdict"]),
        why: s(sb, &["ca_2023_ready", "why"]),
        kek: list("kek"),
        db: list("db"),
        dbx_entries: s(sb, &["dbx_entries"]),
        sbat_level: s(sb, &["sbat_level"])
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
        finished: s(r, &["finished"]),
        source: source.to_string(),
    })
}

/// `defib reports --firmware` as CSV: one line per machine (its latest
/// report), the machines that need the certificate update first.
pub fn firmware_csv(rows: &[FirmwareRow]) -> String {
    csv_lines(
        "computer_name,machine_uuid,machine_serial,secure_boot,ca_2023_ready,why,kek,db,dbx_entries,sbat_level,finished,source",
        rows.iter().map(|r| {
            [
                &r.computer_name,
                &r.machine_uuid,
                &r.machine_serial,
                &r.secure_boot,
                &r.ca_2023_ready,
                &r.why,
                &r.kek,
                &r.db,
                &r.dbx_entries,
                &r.sbat_level,
                &r.finished,
                &r.source,
            ]
        }),
    )
}

/// A header line, then one line per row, every cell through [`csv_cell`].
fn csv_lines<'a, const N: usize>(
    header: &str,
    rows: impl Iterator<Item = [&'a String; N]>,
) -> String {
    let mut out = format!("{header}\n");
    for f in rows {
        out.push_str(&f.iter().map(|x| csv_cell(x)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

/// Which machine a run was on: its UUID, else its serial, else its
/// Windows computer name, else the file it came from.
pub fn machine_key(r: &Row) -> &str {
    [&r.uuid, &r.serial, &r.computer, &r.source]
        .into_iter()
        .find(|x| !x.trim().is_empty())
        .map_or("", |x| x.as_str())
}

/// The index of each machine's latest run (by `finished`, then the order
/// read), in the order of `rows`. A machine that failed and was then
/// repaired counts as repaired.
pub fn latest_runs(rows: &[Row]) -> Vec<usize> {
    let mut latest: std::collections::BTreeMap<&str, usize> = Default::default();
    for (i, r) in rows.iter().enumerate() {
        let k = machine_key(r);
        match latest.get(k) {
            Some(&j) if rows[j].finished > r.finished => {}
            _ => {
                latest.insert(k, i);
            }
        }
    }
    let mut v: Vec<usize> = latest.into_values().collect();
    v.sort_unstable();
    v
}

/// The latest row per machine (UUID, else serial, else computer name),
/// `needs-update` first, then `unknown`, then `ready`.
pub fn dedup_firmware(rows: &[FirmwareRow]) -> Vec<FirmwareRow> {
    let mut latest: std::collections::BTreeMap<String, FirmwareRow> = Default::default();
    for r in rows {
        let k = [
            &r.machine_uuid,
            &r.machine_serial,
            &r.computer_name,
            &r.source,
        ]
        .into_iter()
        .find(|x| !x.is_empty())
        .cloned()
        .unwrap_or_default();
        match latest.get(&k) {
            Some(old) if old.finished >= r.finished => {}
            _ => {
                latest.insert(k, r.clone());
            }
        }
    }
    let rank = |v: &str| match v {
        "needs-update" => 0,
        "unknown" => 1,
        "ready" => 3,
        _ => 2,
    };
    let mut out: Vec<FirmwareRow> = latest.into_values().collect();
    out.sort_by(|a, b| {
        rank(&a.ca_2023_ready)
            .cmp(&rank(&b.ca_2023_ready))
            .then_with(|| a.computer_name.cmp(&b.computer_name))
    });
    out
}

/// `defib reports --keys-used` as CSV, every cell through [`csv_cell`].
pub fn keys_used_csv(uses: &[KeyUse]) -> String {
    csv_lines(
        "computer_name,machine_uuid,machine_serial,volume,ntfs_serial,protector_id,key_source,run_id,finished,source",
        uses.iter().map(|u| {
            [
                &u.computer_name,
                &u.machine_uuid,
                &u.machine_serial,
                &u.volume,
                &u.ntfs_serial,
                &u.protector_id,
                &u.key_source,
                &u.run_id,
                &u.finished,
                &u.source,
            ]
        }),
    )
}

/// What [`gather`] found: the table, and what it passed over.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Fleet {
    pub rows: Vec<Row>,
    /// Every recovery-password unlock in the reports, one per report and
    /// volume (see [`dedup_key_uses`]).
    pub key_uses: Vec<KeyUse>,
    /// The Secure Boot inventory of each report that has one.
    pub firmware: Vec<FirmwareRow>,
    /// Files that are not defib reports or could not be read, and media
    /// that could not be opened: `<source>: <why>`, one line each. Raw
    /// text; print it through [`term`].
    pub warnings: Vec<String>,
    /// The reports themselves, in the order of `rows` (one each), for the
    /// HTML page's per-machine view.
    #[serde(skip)]
    pub reports: Vec<Value>,
    /// How many report files were skipped (media errors are not counted:
    /// a stick that cannot be read has no count of files).
    pub skipped: usize,
}

impl Fleet {
    fn skip(&mut self, source: &str, why: impl std::fmt::Display) {
        self.warnings.push(format!("{source}: skipped: {why}"));
        self.skipped += 1;
    }

    fn add(&mut self, source: String, r: &Value) {
        match check_report(r) {
            Ok(()) => {
                self.key_uses.extend(key_uses(&source, r));
                self.firmware.extend(firmware_row(&source, r));
                self.rows.push(row(source, r));
                self.reports.push(r.clone());
            }
            Err(why) => self.skip(&source, why),
        }
    }
}

/// Every report under the given images, devices and folders. Never fails
/// as a whole: a source or file that cannot be read becomes a warning.
pub fn gather(sources: &[PathBuf]) -> Fleet {
    let mut fleet = Fleet::default();
    for src in sources {
        let name = src.display().to_string();
        // The admin named this path, so a link to it is followed; what is
        // inside a folder is not.
        let meta = match std::fs::metadata(src) {
            Ok(m) => m,
            Err(e) => {
                fleet
                    .warnings
                    .push(format!("{name}: cannot read it ({e}); is the path right?"));
                continue;
            }
        };
        if meta.is_dir() {
            gather_folder(src, &mut fleet);
        } else if meta.is_file() || is_block_device(&meta) {
            gather_medium(src, &mut fleet);
        } else {
            // A FIFO or socket would block the open.
            fleet.warnings.push(format!(
                "{name}: not a folder, an image file or a block device; not read"
            ));
        }
    }
    fleet
}

#[cfg(unix)]
fn is_block_device(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    m.file_type().is_block_device()
}

#[cfg(not(unix))]
fn is_block_device(_: &std::fs::Metadata) -> bool {
    false
}

fn gather_folder(dir: &Path, fleet: &mut Fleet) {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            fleet
                .warnings
                .push(format!("{}: cannot list it ({e})", dir.display()));
            return;
        }
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| match e {
            Ok(e) => Some(e.path()),
            Err(err) => {
                fleet.warnings.push(format!(
                    "{}: an entry cannot be listed ({err})",
                    dir.display()
                ));
                None
            }
        })
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("json"))
        })
        .collect();
    files.sort();
    for f in files {
        let name = f.display().to_string();
        match read_report_file(&f) {
            Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(v) => fleet.add(name, &v),
                Err(e) => fleet.skip(&name, format!("not valid JSON ({e})")),
            },
            Err(why) => fleet.skip(&name, why),
        }
    }
}

/// One report file read the way a folder's are (regular file, size
/// bound, known schema): its bytes and parsed value, or why not.
/// `defib serve` takes each arriving report through this before it joins
/// `--reports DIR`.
pub fn read_report(p: &Path) -> std::result::Result<(Vec<u8>, Value), String> {
    let bytes = read_report_file(p)?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("not JSON ({e})"))?;
    check_report(&v)?;
    Ok((bytes, v))
}

/// The bytes of one report file in a folder, if it is a regular file of
/// at most [`MAX_REPORT`] bytes. The file is opened first, without
/// following a link (`O_NOFOLLOW`) and without waiting for a writer
/// (`O_NONBLOCK`, so a FIFO named `*.json`, even one swapped in after the
/// folder was listed, cannot hang the run), and its type and size are
/// taken from the open handle: what is checked is what is read.
fn read_report_file(p: &Path) -> std::result::Result<Vec<u8>, String> {
    let f = open_no_wait(p)?;
    let meta = f.metadata().map_err(|e| format!("cannot read it ({e})"))?;
    if !meta.is_file() {
        return Err("not a regular file (a FIFO, device or folder); not read".into());
    }
    if meta.len() > MAX_REPORT {
        return Err(format!(
            "{} bytes, over the {MAX_REPORT}-byte limit for a report",
            meta.len()
        ));
    }
    let mut data = Vec::new();
    // Read at most one byte past the cap, in case it grows while read.
    f.take(MAX_REPORT + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot read it ({e})"))?;
    if data.len() as u64 > MAX_REPORT {
        return Err(format!("over the {MAX_REPORT}-byte limit for a report"));
    }
    Ok(data)
}

#[cfg(unix)]
fn open_no_wait(p: &Path) -> std::result::Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(p)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => "a symbolic link; only regular files are read".to_string(),
            _ => format!("cannot open it ({e})"),
        })
}

#[cfg(not(unix))]
fn open_no_wait(p: &Path) -> std::result::Result<std::fs::File, String> {
    std::fs::File::open(p).map_err(|e| format!("cannot open it ({e})"))
}

fn gather_medium(src: &Path, fleet: &mut Fleet) {
    let reports = UsbImage::open(src).and_then(|img| crate::inspect::reports(&img));
    let reports = match reports {
        Ok(r) => r,
        Err(e) => {
            fleet.warnings.push(format!(
                "{}: cannot read its reports ({e:#}); copy the reports off it another way, or pass a folder",
                src.display()
            ));
            return;
        }
    };
    for r in reports {
        let name = format!("{}:{}", src.display(), r.name);
        match r.error {
            Some(e) => fleet.skip(&name, e),
            None => fleet.add(name, &r.report),
        }
    }
}

/// The rows of [`gather`], for callers that want only the table.
pub fn collect(sources: &[PathBuf]) -> Result<Vec<Row>> {
    Ok(gather(sources).rows)
}

/// A string made safe to print on a terminal: control characters (C0,
/// DEL, C1, which carry ANSI escapes and can move the cursor or rewrite
/// lines) and bidirectional overrides (which reorder what is shown) are
/// written as escapes (`\x1b`, `\u{202e}`); everything else is kept.
pub fn term(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() || is_bidi_control(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// Unicode's explicit directional formatting characters (UAX #9): the
/// "Trojan Source" characters that make text display in another order.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// One CSV cell (RFC 4180), safe to open in a spreadsheet and to print.
///
/// OWASP's CSV-injection rule: a cell starting with `=`, `+`, `-`, `@`,
/// tab or carriage return is a formula to Excel, LibreOffice and Sheets,
/// so it gets a leading `'`, which they show as text. Control characters
/// are escaped as for [`term`] (the CSV often goes to a terminal first).
/// A cell holding `,`, `;` (the separator in many locales) or `"` is
/// quoted, so no part of it can become a cell of its own.
pub fn csv_cell(f: &str) -> String {
    let formula = |s: &str| s.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let mut cell = term(f);
    if formula(f) || formula(&cell) {
        cell.insert(0, '\'');
    }
    if cell.contains([',', ';', '"']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell
    }
}

/// RFC 4180 CSV with a header line, every cell through [`csv_cell`].
pub fn csv(rows: &[Row]) -> String {
    let mut out = String::from(
        "run_id,finished,serial,uuid,computer,windows,verdict,changes,reason,source\n",
    );
    for r in rows {
        let f = [
            &r.run_id,
            &r.finished,
            &r.serial,
            &r.uuid,
            &r.computer,
            &r.windows,
            &r.verdict,
            &r.changes.to_string(),
            &r.reason,
            &r.source,
        ];
        out.push_str(&f.iter().map(|x| csv_cell(x)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

/// A table for the terminal, with a count per verdict at the end and the
/// number of files skipped. Every field goes through [`term`].
pub fn table(fleet: &Fleet) -> String {
    let rows = &fleet.rows;
    let mut out = format!(
        "{:<18} {:<16} {:<24} {:<17} {:>3}  {}\n",
        "FINISHED", "COMPUTER", "WINDOWS", "VERDICT", "CHG", "MACHINE"
    );
    for r in rows {
        let machine = if r.serial.is_empty() {
            &r.uuid
        } else {
            &r.serial
        };
        // Escape first, then cut: a cut escape is still inert text.
        out.push_str(&format!(
            "{:<18} {:<16} {:<24} {:<17} {:>3}  {}\n",
            term(&r.finished).chars().take(16).collect::<String>(),
            term(&r.computer),
            term(&r.windows).chars().take(24).collect::<String>(),
            term(&r.verdict),
            r.changes,
            term(machine)
        ));
    }
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for r in rows {
        *counts.entry(r.verdict.as_str()).or_default() += 1;
    }
    out.push_str(&format!(
        "{} reports: {}\n",
        rows.len(),
        counts
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if fleet.skipped > 0 {
        out.push_str(&format!(
            "{} file(s) skipped: not defib reports or unreadable (see the warnings)\n",
            fleet.skipped
        ));
    }
    out
}

/// For tests and callers that already hold a path.
pub fn collect_one(p: &Path) -> Result<Vec<Row>> {
    collect(&[p.to_path_buf()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn report(computer: &str, reason: &str) -> Value {
        serde_json::json!({
            "schema": 1, "run_id": "20261126T050215Z-1a2b3c4d", "finished": "2026-11-26T05:02:21Z",
            "machine": {"product_serial": "SN1", "product_uuid": "u"},
            "verdict": "repaired",
            "windows": [{"identity": {"computer_name": computer, "product_name": "Microsoft Windows XP", "build": 2600},
                         "verdict": "repaired", "reason": reason,
                         "playbooks": [{"actions": [{"status": "done"}, {"status": "skipped"}, {"status": "done"}]}]}]
        })
    }

    fn write(dir: &Path, name: &str, v: &Value) {
        std::fs::write(dir.join(name), serde_json::to_vec(v).unwrap()).unwrap();
    }

    /// Runs `gather` on another thread: a test that would hang fails
    /// after `secs` instead.
    fn gather_within(dir: &Path, secs: u64) -> Fleet {
        let (tx, rx) = mpsc::channel();
        let d = dir.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(gather(&[d]));
        });
        rx.recv_timeout(Duration::from_secs(secs))
            .expect("defib reports hung on this folder")
    }

    #[test]
    fn rows_from_a_folder_with_a_bad_file() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "a.json",
            &report("WARD3-PC07", "repaired: mcafee-dat-5958"),
        );
        std::fs::write(d.path().join("b.json"), b"{ torn").unwrap();
        let fleet = gather_within(d.path(), 30);
        let rows = &fleet.rows;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].computer, "WARD3-PC07");
        assert_eq!(rows[0].windows, "Microsoft Windows XP 2600");
        assert_eq!(rows[0].changes, 2);
        assert_eq!(fleet.skipped, 1);
        assert!(
            fleet.warnings[0].contains("b.json") && fleet.warnings[0].contains("not valid JSON"),
            "{:?}",
            fleet.warnings
        );
        let t = table(&fleet);
        assert!(
            t.contains("1 reports: 1 repaired\n1 file(s) skipped"),
            "{t}"
        );
        let c = csv(rows);
        assert_eq!(c.lines().count(), 2);
        assert!(
            c.lines()
                .nth(1)
                .unwrap()
                .contains(",repaired,2,repaired: mcafee-dat-5958,"),
            "{c}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn fifo_named_json_does_not_hang() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.json", &report("PC1", "r"));
        let fifo =
            std::ffi::CString::new(d.path().join("x.json").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a node.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let fleet = gather_within(d.path(), 20);
        assert_eq!(fleet.rows.len(), 1);
        assert_eq!(fleet.skipped, 1);
        assert!(
            fleet.warnings[0].contains("x.json")
                && fleet.warnings[0].contains("not a regular file")
        );
    }

    /// A FIFO can be swapped in for a report between any check of its name
    /// and the open (a hostile stick or share can do that at will), so no
    /// check of the name can protect the open: the open itself must not
    /// wait for a writer, and the type must come from the open handle.
    #[cfg(unix)]
    #[test]
    fn opening_a_fifo_does_not_wait_and_is_refused_on_its_handle() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("x.json");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a node.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = mpsc::channel();
        let p = fifo.clone();
        std::thread::spawn(move || {
            let opened = open_no_wait(&p).map(|f| f.metadata().unwrap().file_type());
            let read = read_report_file(&p);
            let _ = tx.send((opened, read));
        });
        let (opened, read) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("opening a FIFO named like a report waited for a writer");
        use std::os::unix::fs::FileTypeExt;
        assert!(opened.unwrap().is_fifo());
        assert!(read.unwrap_err().contains("not a regular file"));
        // A regular report still reads, a link is refused at the open.
        let good = serde_json::to_vec(&report("PC1", "r")).unwrap();
        std::fs::write(d.path().join("a.json"), &good).unwrap();
        assert_eq!(read_report_file(&d.path().join("a.json")).unwrap(), good);
        std::os::unix::fs::symlink(d.path().join("a.json"), d.path().join("l.json")).unwrap();
        assert!(read_report_file(&d.path().join("l.json"))
            .unwrap_err()
            .contains("symbolic link"));
    }

    #[cfg(unix)]
    #[test]
    fn symlinked_report_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "r.json", &report("OUTSIDE", "r"));
        std::os::unix::fs::symlink(outside.path().join("r.json"), d.path().join("l.json")).unwrap();
        let fleet = gather_within(d.path(), 20);
        assert!(fleet.rows.is_empty());
        assert!(
            fleet.warnings[0].contains("symbolic link"),
            "{:?}",
            fleet.warnings
        );
    }

    #[test]
    fn non_report_json_and_unknown_schema_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.json", &report("PC1", "r"));
        write(
            d.path(),
            "package.json",
            &serde_json::json!({"name": "x", "version": "1.0.0"}),
        );
        write(d.path(), "list.json", &serde_json::json!([1, 2, 3]));
        let mut future = report("PC2", "r");
        future["schema"] = 99.into();
        write(d.path(), "future.json", &future);
        let mut odd = report("PC3", "r");
        odd["verdict"] = "pwned".into();
        write(d.path(), "odd.json", &odd);
        let fleet = gather_within(d.path(), 30);
        assert_eq!(fleet.rows.len(), 1, "{:?}", fleet.rows);
        assert_eq!(fleet.skipped, 4);
        let w = fleet.warnings.join("\n");
        assert!(w.contains("future.json: skipped: report schema 99"), "{w}");
        assert!(
            w.contains("package.json: skipped: not a defib report"),
            "{w}"
        );
        assert!(w.contains("list.json: skipped: not a defib report"), "{w}");
        assert!(w.contains("odd.json: skipped: not a defib report"), "{w}");
        let t = table(&fleet);
        assert!(
            t.contains("1 reports: 1 repaired\n4 file(s) skipped"),
            "{t}"
        );
    }

    #[test]
    fn oversized_report_is_not_read() {
        let d = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(d.path().join("big.json")).unwrap();
        f.set_len(MAX_REPORT + 1).unwrap();
        let fleet = gather_within(d.path(), 30);
        assert_eq!(fleet.skipped, 1);
        assert!(fleet.warnings[0].contains("limit"), "{:?}", fleet.warnings);
    }

    #[test]
    fn unreadable_medium_is_a_warning_and_the_rest_still_lists() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.json", &report("PC1", "r"));
        let junk = d.path().join("stick.img");
        std::fs::write(&junk, vec![0u8; 64 << 10]).unwrap();
        let fleet = gather(&[junk, d.path().join("missing"), d.path().to_path_buf()]);
        assert_eq!(fleet.rows.len(), 1);
        assert_eq!(fleet.warnings.len(), 2, "{:?}", fleet.warnings);
        assert!(fleet.warnings[0].contains("stick.img: cannot read its reports"));
    }

    /// A small defib-shaped stick holding `reports`.
    fn stick(dir: &Path, reports: &[(&str, Vec<u8>)]) -> PathBuf {
        let mut files = std::collections::BTreeMap::new();
        files.insert("defib/manifest.json".to_string(), b"{}".to_vec());
        for (name, data) in reports {
            files.insert(format!("reports/{name}"), data.clone());
        }
        let spec = crate::image::EspSpec {
            from_disk: Default::default(),
            files,
            dirs: vec!["reports".into()],
            label: "DEFIB".into(),
            free_space: 1 << 20,
            seed: [3; 32],
            mtime: 1_721_347_200,
            legacy_bios_bootable: false,
        };
        let out = dir.join("stick.img");
        crate::image::write_usb_image(&spec, &out).unwrap();
        out
    }

    #[test]
    fn corrupt_fat_chain_on_a_stick_skips_one_report_not_the_table() {
        let d = tempfile::tempdir().unwrap();
        let good = serde_json::to_vec(&report("PC1", "r")).unwrap();
        let mut big = report("PC2", "r");
        big["pad"] = "FATCHAIN".repeat(8 << 10).into(); // 64 KiB: many clusters
        let big = serde_json::to_vec(&big).unwrap();
        let img = stick(d.path(), &[("a.json", good), ("b.json", big.clone())]);
        let clean = std::fs::read(&img).unwrap();
        let mut bytes = clean.clone();
        // FAT32 boot sector fields (Microsoft's FAT spec): bytes per
        // sector @11, sectors per cluster @13, reserved sectors @14, FAT
        // count @16, sectors per FAT @36.
        let esp = crate::image::UsbImage::open(&img).unwrap().esp_offset() as usize;
        let le16 = |o: usize| u16::from_le_bytes([bytes[esp + o], bytes[esp + o + 1]]) as usize;
        let le32 =
            |o: usize| u32::from_le_bytes(bytes[esp + o..esp + o + 4].try_into().unwrap()) as usize;
        let (bps, spc, reserved, nfats, fatsz) = (
            le16(11),
            bytes[esp + 13] as usize,
            le16(14),
            bytes[esp + 16] as usize,
            le32(36),
        );
        let data = esp + (reserved + nfats * fatsz) * bps;
        // Both reports start alike (sorted keys); the pad is b.json's alone.
        let pad = big
            .windows(16)
            .position(|w| w == b"FATCHAINFATCHAIN")
            .unwrap();
        let at = (data..bytes.len() - 16)
            .find(|&i| bytes[i..].starts_with(b"FATCHAINFATCHAIN"))
            .expect("b.json on the stick")
            - pad;
        let cluster = (at - data) / (bps * spc) + 2;
        // Point its first cluster's successor far past the volume (a read
        // error), or mark it free (fatfs quietly ends the file there), in
        // every FAT copy.
        // Or point it back at itself: a loop, which fatfs would follow for
        // as many bytes as the entry claims.
        for next in [0x0FFF_FFEFu32, 0, cluster as u32] {
            bytes.copy_from_slice(&clean);
            for n in 0..nfats {
                let e = esp + (reserved + n * fatsz) * bps + cluster * 4;
                bytes[e..e + 4].copy_from_slice(&next.to_le_bytes());
            }
            std::fs::write(&img, &bytes).unwrap();
            let fleet = gather(std::slice::from_ref(&img));
            assert_eq!(fleet.rows.len(), 1, "{next:#x}: {:?}", fleet.warnings);
            assert_eq!(fleet.rows[0].computer, "PC1");
            assert_eq!(fleet.skipped, 1);
            assert!(
                fleet.warnings[0].contains("stick.img:b.json: skipped: unreadable"),
                "{next:#x}: {:?}",
                fleet.warnings
            );
        }
    }

    #[test]
    fn formula_computer_name_is_neutralised_in_csv() {
        for (evil, want) in [
            (
                "=HYPERLINK(\"http://x\",\"y\")",
                "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\"",
            ),
            ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\t=1", "'\\t=1"),
            ("\r=1", "'\\r=1"),
            ("PC;=1+1", "\"PC;=1+1\""),
        ] {
            assert_eq!(csv_cell(evil), want, "{evil:?}");
        }
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.json", &report("=cmd|'/C calc'!A0", "r"));
        let c = csv(&gather_within(d.path(), 30).rows);
        assert!(
            c.lines().nth(1).unwrap().contains(",'=cmd|'/C calc'!A0,"),
            "{c}"
        );
        assert_eq!(csv_cell("WARD3-PC07"), "WARD3-PC07");
    }

    /// A report of one PC with BitLocker volumes opened from `sources`.
    fn bitlocker_report(computer: &str, run: &str, finished: &str, vols: &[(&str, &str)]) -> Value {
        let wins: Vec<Value> = vols
            .iter()
            .enumerate()
            .map(|(i, (protector, source))| {
                serde_json::json!({
                    "volume": format!("nvme0n1p{}", i + 3),
                    "identity": {"computer_name": computer},
                    "state": {"ntfs_serial": "5A1E00000000C0DE", "bitlocker": {
                        "unlocked": !source.is_empty(),
                        "unlocked_with": protector, "key_source": source}},
                    "verdict": "repaired", "playbooks": []
                })
            })
            .collect();
        serde_json::json!({
            "schema": 1, "run_id": run, "finished": finished,
            "machine": {"product_serial": null, "product_uuid": "5eed0000-defb-4000-8000-00000000c0de"},
            "verdict": "repaired", "windows": wins
        })
    }

    #[test]
    fn keys_used_lists_recovery_passwords_to_rotate() {
        let p = |n: u8| format!("{n:08x}-74c7-4e90-8fa2-1f6a2e2b4e0c");
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "a.json",
            &bitlocker_report(
                "ICU-12",
                "20261126T050215Z-00000001",
                "2026-11-26T05:02:21Z",
                &[
                    (&p(1), "typed"),
                    (&p(2), "startup-key"),
                    (&p(3), "clear-key"),
                    (&p(4), "sealed-key-file"),
                    (&p(5), ""),
                ],
            ),
        );
        // The same PC again later (scan, then fix): one line per protector.
        write(
            d.path(),
            "b.json",
            &bitlocker_report(
                "ICU-12",
                "20261126T060000Z-00000002",
                "2026-11-26T06:00:09Z",
                &[(&p(1), "typed")],
            ),
        );
        write(
            d.path(),
            "c.json",
            &bitlocker_report(
                "=cmd|' /C calc'!A0",
                "20261126T070000Z-00000003",
                "2026-11-26T07:00:00Z",
                &[(&p(6), "key-file"), (&p(7), "network")],
            ),
        );
        let fleet = gather_within(d.path(), 30);
        assert_eq!(fleet.key_uses.len(), 5, "{:#?}", fleet.key_uses);
        let uses = dedup_key_uses(&fleet.key_uses);
        let c = keys_used_csv(&uses);
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(
            lines[0],
            "computer_name,machine_uuid,machine_serial,volume,ntfs_serial,protector_id,key_source,run_id,finished,source"
        );
        assert_eq!(lines.len(), 1 + 4, "{c}");
        // Sorted by computer name: the escaped formula sorts first ('=').
        assert!(lines[1].starts_with("'=cmd|' /C calc'!A0,"), "{c}");
        assert!(
            lines[1].contains(",{00000006-74C7-4E90-8FA2-1F6A2E2B4E0C},key-file,"),
            "{c}"
        );
        assert!(lines[2].contains(",network,"), "{c}");
        let icu: Vec<&&str> = lines.iter().filter(|l| l.starts_with("ICU-12,")).collect();
        assert_eq!(icu.len(), 2, "{c}");
        assert!(icu[0].contains(
            ",nvme0n1p3,5A1E00000000C0DE,{00000001-74C7-4E90-8FA2-1F6A2E2B4E0C},typed,20261126T060000Z-00000002,"
        ), "the latest run of the same protector: {c}");
        assert!(
            icu[1].contains("{00000004-74C7-4E90-8FA2-1F6A2E2B4E0C},sealed-key-file,"),
            "{c}"
        );
        for never in [
            "startup-key",
            "clear-key",
            "00000002-",
            "00000003-",
            "00000005-",
        ] {
            assert!(!c.contains(never), "{never} listed: {c}");
        }
    }

    #[test]
    fn ansi_escape_in_reason_is_shown_escaped() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "a.json",
            &report(
                "PC\u{1b}]0;owned\u{7}",
                "\u{1b}[2J\u{1b}[1;1Hall clean\u{202e}",
            ),
        );
        let fleet = gather_within(d.path(), 30);
        // JSON stays faithful: the raw text, escaped by serde.
        assert_eq!(
            fleet.rows[0].reason,
            "\u{1b}[2J\u{1b}[1;1Hall clean\u{202e}"
        );
        let t = table(&fleet);
        let c = csv(&fleet.rows);
        for out in [&t, &c] {
            assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
            assert!(!out.contains('\u{202e}'), "{out:?}");
        }
        assert!(t.contains("PC\\x1b]0;owned\\x07"), "{t}");
        assert!(c.contains("\\x1b[2J\\x1b[1;1Hall clean\\u{202e}"), "{c}");
        assert_eq!(term("a\u{9b}b\u{7f}"), "a\\u{9b}b\\x7f");
    }

    fn firmware_report(uuid: &str, finished: &str, kek: &[&str], verdict: &str) -> Value {
        serde_json::json!({
            "finished": finished,
            "machine": {"product_uuid": uuid, "product_serial": "SN"},
            "windows": [{"identity": {"computer_name": format!("PC-{uuid}")}}],
            "firmware": {"secure_boot": {
                "enabled": true, "setup_mode": false,
                "pk": ["OEM PK"], "kek": kek,
                "db": ["Windows UEFI CA 2023", "Microsoft Corporation UEFI CA 2011"],
                "dbx_entries": 371,
                "sbat_level": "sbat,1,2025051000\nshim,4\ngrub,5",
                "ca_2023_ready": {"verdict": verdict, "why": "w\n=cmd"}
            }}
        })
    }

    #[test]
    fn firmware_view_keeps_each_machines_latest_and_puts_updates_first() {
        let old = firmware_report(
            "b",
            "2026-11-01T00:00:00Z",
            &["Microsoft Corporation KEK CA 2011"],
            "needs-update",
        );
        let new = firmware_report(
            "b",
            "2026-11-02T00:00:00Z",
            &["Microsoft Corporation KEK 2K CA 2023"],
            "ready",
        );
        let other = firmware_report(
            "a",
            "2026-11-01T00:00:00Z",
            &["Microsoft Corporation KEK CA 2011"],
            "needs-update",
        );
        let bios = serde_json::json!({"finished": "x", "boot": {"firmware": "bios"}});
        let rows: Vec<FirmwareRow> = [("1", &new), ("2", &old), ("3", &other), ("4", &bios)]
            .iter()
            .filter_map(|(src, r)| firmware_row(src, r))
            .collect();
        assert_eq!(rows.len(), 3, "a BIOS report has no firmware row");
        let d = dedup_firmware(&rows);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].computer_name, "PC-a");
        assert_eq!(d[0].ca_2023_ready, "needs-update");
        assert_eq!(d[1].ca_2023_ready, "ready", "the latest report wins");
        assert_eq!(d[1].kek, "Microsoft Corporation KEK 2K CA 2023");
        assert_eq!(d[1].sbat_level, "sbat,1,2025051000");
        assert_eq!(d[1].secure_boot, "on");
        let csv = firmware_csv(&d);
        assert_eq!(csv.lines().count(), 3, "{csv}");
        assert!(!csv.contains(",=cmd"), "a formula reached the CSV: {csv}");
    }
}
