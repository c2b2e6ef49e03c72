//! Fuzz harnesses for the rescue's parsers of untrusted input: one function
//! per cargo-fuzz target in `fuzz/fuzz_targets/`, shared with the stable
//! replay of committed crash inputs (`rescue/tests/fuzz_regressions.rs`), so
//! the fuzzer and `cargo test` run exactly the same code.
//!
//! Each harness feeds raw bytes to a public entry point and asserts what is
//! cheap to check: no panic above all (in PID 1 a panic reboots the PC),
//! and round trips where a writer exists. A harness returns the parser's
//! error so the replay can check that a hostile input was refused cleanly.
//!
//! This is not a test suite of its own and not an API: nothing in the
//! rescue calls it. It lives in the library (behind no feature) only so the
//! fuzz crate and the tests can reach it.

use anyhow::{ensure, Context, Result};
use std::io::Cursor;
use std::path::PathBuf;

/// A harness: bytes in, the parser's verdict out (panics are the bugs).
pub type Harness = fn(&[u8]) -> Result<()>;

/// Every rescue fuzz target by name (the name of its file in
/// `fuzz/fuzz_targets/` and of its folder in `fuzz/regressions/`).
pub const TARGETS: &[(&str, Harness)] = &[
    ("playbook", playbook),
    ("store_index", store_index),
    ("winreg", winreg),
    ("pe", pe),
    ("bup", bup),
    ("volstate", volstate),
    ("bootargs", bootargs),
    ("net", net),
    ("journal", journal),
    ("report", report),
    ("buildinfo", buildinfo),
    ("bitlocker", bitlocker),
    ("keyfile", keyfile),
    ("sealed", sealed),
    ("hivelog", hivelog),
    ("bcd", bcd),
    ("quarantine", quarantine),
    ("dm_table", dm_table),
    ("secureboot", secureboot),
];

/// Playbook TOML: strict parse, then validation.
pub fn playbook(data: &[u8]) -> Result<()> {
    let text = std::str::from_utf8(data)?;
    let p = crate::playbook::Playbook::parse(text, "fuzz.toml")?;
    p.validate()
}

/// The store's `index.json`: parse (which validates every entry), and a
/// serialised index must parse back to the same index.
pub fn store_index(data: &[u8]) -> Result<()> {
    let text = std::str::from_utf8(data)?;
    let idx = crate::store::Index::parse(text, "index.json")?;
    let json = idx.to_json()?;
    let back = crate::store::Index::parse(&json, "index.json (round trip)")
        .context("a serialised index does not parse back")?;
    assert_eq!(back, idx, "index round trip changed the index");
    for e in &idx.entries {
        let _ = crate::store::path_key(&e.path);
    }
    Ok(())
}

/// A registry hive: open, then walk keys (bounded) reading every subkey's
/// default value and a few well-known values, as `windows` does.
pub fn winreg(data: &[u8]) -> Result<()> {
    let hive = crate::winreg::Hive::from_bytes(data.to_vec())?;
    let _ = hive.is_dirty();
    // Breadth-first from the root; a hive may link a key to itself, so depth
    // and count are bounded rather than trusted.
    let mut queue = vec![(String::new(), 0usize)];
    let mut seen = 0usize;
    while let Some((key, depth)) = queue.pop() {
        seen += 1;
        if seen > 64 {
            break;
        }
        for name in ["", "ComputerName", "CurrentBuild", "ProductName", "Current"] {
            if let Ok(Some(v)) = hive.value(&key, name) {
                let _ = (v.as_string(), v.as_u64());
            }
        }
        let Ok(subs) = hive.subkeys(&key) else {
            continue;
        };
        if depth < 6 {
            for s in subs.into_iter().take(16) {
                let child = if key.is_empty() {
                    s
                } else {
                    format!("{key}\\{s}")
                };
                queue.push((child, depth + 1));
            }
        }
    }
    // The paths `windows` reads, whatever the walk found.
    for (k, v) in [
        ("Select", "Current"),
        (
            "ControlSet001\\Control\\ComputerName\\ComputerName",
            "ComputerName",
        ),
        ("Microsoft\\Windows NT\\CurrentVersion", "CurrentBuild"),
    ] {
        let _ = hive.value(k, v);
    }
    Ok(())
}

/// A PE file's headers and version resource.
pub fn pe(data: &[u8]) -> Result<()> {
    let info = crate::pe::pe_info(data)?;
    if let Some(v) = info.file_version {
        let _ = crate::pe::version_string(v);
    }
    Ok(())
}

/// A McAfee `.bup`: read the record, extract every entry. Inputs starting
/// with `RT` instead drive the writer: name, detection and content taken
/// from the rest must come back out of the file `write_bup` makes.
pub fn bup(data: &[u8]) -> Result<()> {
    if let Some(rest) = data.strip_prefix(b"RT") {
        let mut parts = rest.splitn(3, |&b| b == 0);
        let name = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let detection = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let content = parts.next().unwrap_or_default();
        let file = crate::bup::write_bup(&name, &detection, content)?;
        let b = crate::bup::read_bup(&file).context("write_bup's output does not read back")?;
        ensure!(
            b.entries.len() == 1,
            "one file written, {} read",
            b.entries.len()
        );
        assert_eq!(b.entries[0].original_name, name, "bup name round trip");
        let out = crate::bup::extract(&file, &b.entries[0])?;
        assert_eq!(out, content, "bup content round trip");
        return Ok(());
    }
    let b = crate::bup::read_bup(data)?;
    for e in &b.entries {
        let _ = crate::bup::extract(data, e);
    }
    Ok(())
}

/// A volume's first bytes: classification, BitLocker FVE metadata, NTFS
/// boot sector and `$Volume`, and the hibernation header, each on its own.
/// An EFI signature database (PK, KEK, db, dbx as efivarfs gives them,
/// without the attribute bytes): bounded, and every subject printable.
pub fn secureboot(data: &[u8]) -> Result<()> {
    let db = crate::secureboot::parse_database(data);
    // Each signature takes at least a 16-byte owner GUID.
    ensure!(
        db.signatures.len() <= data.len() / 16 + 1,
        "more signatures than the bytes allow"
    );
    for s in db.subjects() {
        ensure!(
            !s.chars().any(char::is_control),
            "a control character in a certificate subject"
        );
    }
    match db.problem {
        Some(p) => anyhow::bail!(p),
        None => Ok(()),
    }
}

pub fn volstate(data: &[u8]) -> Result<()> {
    use crate::volstate as v;
    let _ = v::hibernation_from_header(&data[..data.len().min(8)]);
    let _ = v::hibernation_from_header(data);
    let kind = v::volume_kind(&mut Cursor::new(data), 0)?;
    let bl = v::read_bitlocker(&mut Cursor::new(data), 0);
    let ntfs = v::read_ntfs_state(&mut Cursor::new(data), 0);
    // The same volume behind a partition offset reads the same.
    let mut shifted = vec![0u8; 512];
    shifted.extend_from_slice(data);
    if let Ok(info) = &bl {
        assert_eq!(
            v::read_bitlocker(&mut Cursor::new(&shifted), 512)
                .ok()
                .as_ref(),
            Some(info),
            "BitLocker metadata reads differently at an offset"
        );
    }
    if let Ok(st) = &ntfs {
        assert_eq!(
            v::read_ntfs_state(&mut Cursor::new(&shifted), 512)
                .ok()
                .as_ref(),
            Some(st),
            "NTFS state reads differently at an offset"
        );
    }
    let _ = kind;
    bl.map(|_| ()).or(ntfs.map(|_| ()))
}

/// The kernel command line (`/proc/cmdline` is bytes; the rescue reads it
/// lossily), and each value's spelling must parse back.
pub fn bootargs(data: &[u8]) -> Result<()> {
    use crate::bootargs::{After, BootArgs, MediumHint, Mode};
    let a = BootArgs::parse(&String::from_utf8_lossy(data));
    assert_eq!(Mode::from_value(a.mode.as_str()), Some(a.mode));
    assert_eq!(After::from_value(a.after.as_str()), Some(a.after));
    if let Some(m) = a.medium {
        assert_eq!(MediumHint::from_value(m.as_str()), Some(m));
    }
    Ok(())
}

/// The network's parsers: `ip=`, `BOOTIF=`, `defib.report=`, a lease
/// file (which must survive its own `to_text`) and an HTTP status line.
pub fn net(data: &[u8]) -> Result<()> {
    use crate::pid1::net as n;
    let text = String::from_utf8_lossy(data);
    let _ = n::parse_ip(&text);
    let _ = n::parse_mac(&text);
    let _ = n::status_code(data);
    if let Ok(u) = n::ReportUrl::parse(&text) {
        let _ = u.url_of("report.json");
    }
    match n::Lease::parse(&text) {
        Ok(l) => {
            let back = n::Lease::parse(&l.to_text()).expect("a lease's text parses back");
            assert_eq!(back, l, "lease round trip");
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!(e)),
    }
}

/// A file under the temp folder, removed on drop; the path-taking parsers
/// need one. Named by process and a counter so parallel runs never share.
struct TempPath(PathBuf);

impl TempPath {
    fn new(what: &str) -> TempPath {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        TempPath(std::env::temp_dir().join(format!("defib-fuzz-{what}-{}-{n}", std::process::id())))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `journal.jsonl` as `rescue undo` reads it; every step read must
/// serialise and read back the same.
pub fn journal(data: &[u8]) -> Result<()> {
    let t = TempPath::new("journal");
    std::fs::write(&t.0, data)?;
    let steps = crate::journal::read_journal(&t.0)?;
    for s in &steps {
        let line = serde_json::to_string(s)?;
        let back: crate::journal::Step = serde_json::from_str(&line)?;
        assert_eq!(&back, s, "journal step round trip");
    }
    Ok(())
}

/// `report.json`: parse, serialise, parse again to the same report; render
/// the text report and the file name from it.
pub fn report(data: &[u8]) -> Result<()> {
    let r: crate::report::Report = serde_json::from_slice(data)?;
    let json = r.to_json()?;
    let back: crate::report::Report =
        serde_json::from_slice(&json).context("a serialised report does not parse back")?;
    // f64 fields may not survive exactly; compare the JSON they make.
    assert_eq!(back.to_json()?, json, "report round trip");
    // Only the rescue's own reports are named by `file_name`, but the
    // builder renders any report it reads back.
    let _ = crate::report::render_text(&r);
    let _ = r.file_name();
    Ok(())
}

/// `etc/defib/build.json` and the medium's `defib/manifest.json`.
pub fn buildinfo(data: &[u8]) -> Result<()> {
    let t = TempPath::new("buildinfo");
    for p in [crate::layout::BUILD_INFO, crate::layout::MANIFEST] {
        let f = t.0.join(p);
        std::fs::create_dir_all(f.parent().expect("layout paths have a parent"))?;
        std::fs::write(f, data)?;
    }
    let a = crate::buildinfo::read_build_info(&t.0);
    let b = crate::buildinfo::read_manifest(&t.0);
    a.map(|_| ()).or(b.map(|_| ()))
}

/// BitLocker FVE metadata from a volume's first bytes: parse (checked
/// copies), judge, plan the mapping; a wrong key must be refused, never
/// accepted, on whatever metadata the fuzzer makes.
pub fn bitlocker(data: &[u8]) -> Result<()> {
    use crate::bitlocker::{assess, dm, read_metadata, unlock, Credential, RecoveryPassword};
    let meta = read_metadata(&mut Cursor::new(data), 0)?;
    let len = data.len() as u64;
    let _ = assess(&meta, len);
    let _ = dm::plan(&meta, len);
    // The stretch costs ~0.1 s: try one key only on small inputs.
    if data.len() < 1 << 16 {
        let rp =
            RecoveryPassword::parse("000000-000000-000000-000000-000000-000000-000000-000000")?;
        ensure!(
            unlock(&meta, &Credential::RecoveryPassword(rp)).is_err()
                || meta.vmks().next().is_some(),
            "an all-zero key opened metadata without a protector"
        );
    }
    Ok(())
}

/// Key files as fleets export them: CSV, the `.TXT` Windows saves, `.BEK`.
pub fn keyfile(data: &[u8]) -> Result<()> {
    let mut store = crate::bitlocker::keyfile::KeyStore::default();
    let text = crate::bitlocker::keyfile::decode_text(data);
    let _ = store.add_csv(&text, "fuzz.csv");
    let _ = store.add_recovery_text(&text, "fuzz.txt");
    let _ = store.add_bek(data, "fuzz.bek");
    for r in &store.rejected {
        ensure!(!r.is_empty(), "an empty rejection note");
    }
    Ok(())
}

/// A sealed key file as the rescue meets it in `keys/`: the header
/// reader, then age's parser and decryption with a fixed passphrase, then
/// the key-file parser on what it holds. scrypt is capped at 2¹⁰ so one
/// input stays cheap; a larger work factor must be refused from the
/// header alone.
pub fn sealed(data: &[u8]) -> Result<()> {
    use crate::bitlocker::keyfile::{KeyStore, SealedFile};
    use crate::bitlocker::sealed::{read_header, SealError};
    let header = read_header(data);
    let mut store = KeyStore::default();
    store.sealed.push(SealedFile {
        name: "fuzz.csv.age".into(),
        bytes: data.to_vec(),
    });
    for (_, r) in store.open_sealed("fuzz", 10) {
        if let Ok(h) = &header {
            if h.work_factor > 10 {
                ensure!(
                    matches!(r, Err(SealError::TooMuchWork { .. })),
                    "work factor {} not refused: {r:?}",
                    h.work_factor
                );
            }
        }
        r?;
    }
    Ok(())
}

/// A hive and one log, split at a length prefix (first 4 bytes, LE):
/// replay in memory, then parse the result.
pub fn hivelog(data: &[u8]) -> Result<()> {
    ensure!(data.len() >= 4, "too short");
    let n = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let rest = &data[4..];
    let (hive, log) = rest.split_at(n.min(rest.len()));
    let r = crate::hivelog::replay(
        hive,
        &[crate::hivelog::LogFile {
            name: "fuzz.LOG1",
            data: log,
        }],
    )?;
    let _ = crate::winreg::Hive::from_bytes(r.data)?;
    Ok(())
}

/// A BCD store: read the default entry, and the one edit defib makes must
/// either be refused or give a store that reads again.
pub fn bcd(data: &[u8]) -> Result<()> {
    let _ = crate::bcd::read(data);
    if let Ok(out) = crate::bcd::clear_safeboot(data, &[]) {
        crate::bcd::read(&out).context("an edited BCD does not read back")?;
    }
    Ok(())
}

/// One quarantine record through every vendor's byte parser.
pub fn quarantine(data: &[u8]) -> Result<()> {
    use crate::quarantine::{avast, avira, defender, eset, forticlient, gdata, mcafee_ens};
    let _ = defender::parse_entry(data);
    let _ = defender::parse_resource(data);
    let _ = avira::parse(data);
    let _ = gdata::parse(data);
    let _ = forticlient::parse(data);
    let _ = mcafee_ens::parse(data);
    let _ = eset::parse_log(data);
    let _ = eset::decode(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = avast::parse_index(text);
    }
    Ok(())
}

/// Device-mapper table text (what the rescue hands the kernel).
pub fn dm_table(data: &[u8]) -> Result<()> {
    let text = std::str::from_utf8(data)?;
    let _ = crate::devmapper::parse_table(text)?;
    Ok(())
}
