//! Fuzz harnesses for the builder's parsers of untrusted input: one function
//! per cargo-fuzz target in `fuzz/fuzz_targets/`, shared with the stable
//! replay of committed crash inputs (`builder/tests/fuzz_regressions.rs`) so
//! the two cannot drift. [`seeds`] makes the synthetic seed inputs
//! `scripts/fuzz` starts from where no real-world corpus exists.
//!
//! Not an API and not a test suite: nothing in `defib` calls it. It lives in
//! the library (behind no feature) only so the fuzz crate and the tests can
//! reach it. The rescue's harnesses are in `defib_rescue::fuzzing`.

use anyhow::{ensure, Context, Result};
use std::io::Write;

pub use defib_rescue::fuzzing::Harness;

/// Every builder fuzz target by name (its file in `fuzz/fuzz_targets/` and
/// its folder in `fuzz/regressions/`).
pub const TARGETS: &[(&str, Harness)] = &[
    ("cpio", cpio),
    ("deb", deb),
    ("store_manifest", store_manifest),
    ("store_import", store_import),
    ("fleet", fleet),
    ("sbat", sbat),
];

/// SBAT text and PE images as `defib inspect` reads a stick's loaders: a
/// `.sbat` section's CSV, a level, and shim's `.sbatlevel`; whatever a
/// level revokes really is below it.
pub fn sbat(data: &[u8]) -> Result<()> {
    let text = String::from_utf8_lossy(data);
    let entries = crate::sbat::parse_entries(&text);
    if let Ok(level) = crate::sbat::parse_level(&text) {
        for r in crate::sbat::revoked("fuzz", &entries, &level) {
            ensure!(r.has < r.needs, "revoked at or above the level: {r}");
        }
    }
    let _ = crate::sbat::entries(data);
    let _ = crate::sbat::shim_latest(data);
    Ok(())
}

/// A newc archive as `defib inspect` reads an initramfs: read it; whatever
/// it held, written again by our writer, must read back the same.
pub fn cpio(data: &[u8]) -> Result<()> {
    use crate::cpio::{read_newc, Archive, Entry};
    let entries = read_newc(data)?;
    let mut a = Archive::new();
    for (path, e) in &entries {
        // The writer is stricter than the reader in places (modes, parents
        // that are files); what it refuses is simply not round-tripped.
        let _ = match e {
            Entry::Dir { mode } => a.add_dir(path, *mode),
            Entry::File { mode, data } => a.add_file(path, *mode, data.clone()),
            Entry::Symlink { target } => a.add_symlink(path, target),
        };
    }
    let mut out = Vec::new();
    a.write_newc(&mut out, 0)?;
    let back = read_newc(&out).context("our own cpio output does not read back")?;
    for (path, e) in &back {
        if let Some(orig) = a.get(path) {
            assert_eq!(orig, e, "cpio round trip changed {path:?}");
        }
    }
    assert!(
        back.len() >= a.len(),
        "cpio round trip lost entries: {} written, {} read",
        a.len(),
        back.len()
    );
    Ok(())
}

/// A `.deb` (the reader takes a path): control fields, dependencies and
/// every data member.
pub fn deb(data: &[u8]) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let p = dir.path().join("fuzz.deb");
    std::fs::write(&p, data)?;
    let d = crate::deb::Deb::open(&p)?;
    let _ = (d.package(), d.version(), d.depends());
    d.extract(|_| true)?;
    Ok(())
}

/// The export manifest (`defib-export.json`) and zip member names.
pub fn store_manifest(data: &[u8]) -> Result<()> {
    let text = std::str::from_utf8(data)?;
    let _ = crate::store::check_member_name(text);
    let m = crate::store::parse_manifest(text, "defib-export.json")?;
    for f in &m.files {
        let _ = crate::store::check_member_name(&f.zip_path);
    }
    let json = serde_json::to_string(&m)?;
    let back = crate::store::parse_manifest(&json, "round trip")?;
    assert_eq!(back, m, "export manifest round trip");
    Ok(())
}

/// A whole export zip imported into an empty store. A refused import must
/// leave no store behind.
pub fn store_import(data: &[u8]) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let zip = dir.path().join("export.zip");
    std::fs::write(&zip, data)?;
    let store = dir.path().join("store");
    let r = crate::store::import(&zip, &store);
    if r.is_err() {
        assert!(!store.exists(), "a refused import left a store folder");
    }
    r.map(|_| ())
}

/// A report file as `defib reports` reads it: checked as a report, loose
/// JSON to a row, then the CSV, the keys-used and firmware CSVs and the
/// table.
pub fn fleet(data: &[u8]) -> Result<()> {
    let v: serde_json::Value = serde_json::from_slice(data)?;
    let _ = crate::fleet::check_report(&v);
    let rows = vec![crate::fleet::row("fuzz.json".into(), &v)];
    let csv = crate::fleet::csv(&rows);
    ensure!(csv.starts_with("run_id,"), "CSV lost its header");
    let uses = crate::fleet::dedup_key_uses(&crate::fleet::key_uses("fuzz.json", &v));
    let keys = crate::fleet::keys_used_csv(&uses);
    ensure!(
        keys.starts_with("computer_name,"),
        "keys-used CSV lost its header"
    );
    ensure!(
        keys.lines().count() == uses.len() + 1,
        "a keys-used cell broke a CSV line"
    );
    let fw = crate::fleet::dedup_firmware(
        &crate::fleet::firmware_row("fuzz.json", &v)
            .into_iter()
            .collect::<Vec<_>>(),
    );
    let fw_csv = crate::fleet::firmware_csv(&fw);
    ensure!(
        fw_csv.lines().count() == fw.len() + 1,
        "a firmware cell broke a CSV line"
    );
    let f = crate::fleet::Fleet {
        rows,
        key_uses: uses,
        firmware: fw,
        warnings: Vec::new(),
        skipped: 0,
        reports: Vec::new(),
    };
    let _ = crate::fleet::table(&f);
    Ok(())
}

/// Synthetic seeds, `(target, name, bytes)`, for targets whose real inputs
/// are made by us or by tools not on this machine: a `.deb`, a store
/// export zip, an initramfs, a `.bup`, a report.
pub fn seeds() -> Result<Vec<(&'static str, String, Vec<u8>)>> {
    let mut out = Vec::new();

    let mut a = crate::cpio::Archive::new();
    a.add_dir("etc", 0o755)?;
    a.add_file("etc/defib/build.json", 0o644, &b"{}"[..])?;
    a.add_file("init", 0o755, &b"\x7fELF"[..])?;
    a.add_symlink("bin/sh", "/bin/busybox")?;
    let mut cpio = Vec::new();
    a.write_newc(&mut cpio, 0)?;
    out.push(("cpio", "initramfs.cpio".into(), cpio));

    out.push((
        "deb",
        "tiny.deb".into(),
        make_deb(
            "Package: tiny\nVersion: 1.0\nArchitecture: amd64\nDepends: a (>= 1) | b, c:any\n",
            &[("./usr/lib/tiny/file", b"hello"), ("./boot/vmlinuz", b"k")],
        )?,
    ));

    let content = b"MZ\x90\0known-good svchost";
    let manifest = format!(
        "{{\"schema\":1,\"product\":\"Windows XP Professional\",\"build\":2600,\"ubr\":null,\
         \"service_pack\":\"Service Pack 3\",\"arch\":\"x86\",\"computer\":\"REF-XP3\",\
         \"exported\":\"2010-04-22T09:00:00Z\",\"files\":[{{\"path\":\"WINDOWS\\\\system32\\\\svchost.exe\",\
         \"file_version\":\"5.1.2600.5512\",\"sha256\":\"{}\",\"size\":{},\
         \"zip_path\":\"files/WINDOWS/system32/svchost.exe\"}}]}}",
        crate::sha256_hex(content),
        content.len()
    );
    out.push((
        "store_manifest",
        "defib-export.json".into(),
        manifest.clone().into_bytes(),
    ));
    for (name, method) in [
        ("export-stored.zip", zip::CompressionMethod::Stored),
        ("export-deflated.zip", zip::CompressionMethod::Deflated),
    ] {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let o = zip::write::SimpleFileOptions::default().compression_method(method);
        w.start_file(crate::store::MANIFEST, o)?;
        w.write_all(manifest.as_bytes())?;
        w.start_file("files/WINDOWS/system32/svchost.exe", o)?;
        w.write_all(content)?;
        out.push(("store_import", name.into(), w.finish()?.into_inner()));
    }

    out.push((
        "bup",
        "svchost.bup".into(),
        defib_rescue::bup::write_bup(r"C:\WINDOWS\system32\svchost.exe", "W32/Wecorl.a", content)?,
    ));
    out.push((
        "bup",
        "roundtrip".into(),
        b"RTC:\\x.exe\0W32/Test\0content".to_vec(),
    ));

    let mut r = defib_rescue::report::Report::begin(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_271_858_400),
        "20100421T140000Z-1a2b3c4d".into(),
        defib_rescue::bootargs::Mode::Auto,
    );
    r.messages.push("fuzz seed".into());
    r.finish(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_271_858_460));
    let json = r.to_json()?;
    out.push(("report", "report.json".into(), json.clone()));
    out.push(("fleet", "report.json".into(), json));

    out.push((
        "sbat",
        "level.txt".into(),
        b"sbat,1,2025051000\nshim,4\ngrub,5\ngrub.proxmox,2\n".to_vec(),
    ));
    out.push((
        "sbat",
        "grub.sbat.csv".into(),
        b"sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\ngrub,5,Free Software Foundation,grub,2.12,https://www.gnu.org/software/grub/\n".to_vec(),
    ));
    // A signature list of two SHA-256 entries, as a dbx holds them.
    let mut esl = vec![
        0x26, 0x16, 0xc4, 0xc1, 0x4c, 0x50, 0x92, 0x40, 0xac, 0xa9, 0x41, 0xf9, 0x36, 0x93, 0x43,
        0x28,
    ];
    esl.extend(((28 + 2 * 48) as u32).to_le_bytes());
    esl.extend(0u32.to_le_bytes());
    esl.extend(48u32.to_le_bytes());
    esl.extend([0x11; 96]);
    out.push(("secureboot", "dbx.esl".into(), esl));
    Ok(out)
}

/// A minimal `.deb`: `debian-binary`, `control.tar.xz` and `data.tar.zst`.
fn make_deb(control: &str, files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    fn tar_of(files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append_data(&mut h, name, *data)?;
        }
        Ok(b.into_inner()?)
    }
    let control_tar = tar_of(&[("./control", control.as_bytes())])?;
    let mut cx = Vec::new();
    let mut enc = liblzma::write::XzEncoder::new(&mut cx, 6);
    enc.write_all(&control_tar)?;
    enc.finish()?;
    let data_zst = zstd::encode_all(&tar_of(files)?[..], 3)?;
    let mut out = Vec::new();
    {
        let mut ar = ar::Builder::new(&mut out);
        for (name, data) in [
            ("debian-binary", &b"2.0\n"[..]),
            ("control.tar.xz", &cx[..]),
            ("data.tar.zst", &data_zst[..]),
        ] {
            let h = ar::Header::new(name.as_bytes().to_vec(), data.len() as u64);
            ar.append(&h, data)?;
        }
    }
    Ok(out)
}
