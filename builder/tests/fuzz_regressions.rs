//! Replays every committed fuzz crash input in `fuzz/regressions/<target>/`
//! for the builder's targets through the same harness the fuzzer runs
//! (`defib_builder::fuzzing`), on stable, and checks every folder there
//! names a target of either crate (the rescue's replay in
//! `rescue/tests/fuzz_regressions.rs`).
//!
//! Also home of `write_fuzz_seeds`, an ignored test `scripts/fuzz` runs to
//! build the seed corpus from the real-world corpora and synthetic inputs;
//! it is seed preparation, not a check. See docs/fuzzing.md.

use defib_builder::fuzzing::{seeds, TARGETS};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

fn regressions() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions")
}

#[test]
fn builder_fuzz_regressions_do_not_panic() {
    let mut replayed = 0;
    for (target, harness) in TARGETS {
        let Ok(dir) = std::fs::read_dir(regressions().join(target)) else {
            continue;
        };
        let mut files: Vec<_> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            if let Err(e) = harness(&data) {
                assert!(
                    !format!("{e:#}").trim().is_empty(),
                    "{}: refused with an empty error",
                    f.display()
                );
            }
            replayed += 1;
        }
    }
    eprintln!("replayed {replayed} builder fuzz regression inputs");
}

#[test]
fn every_regression_folder_names_a_target() {
    let known: Vec<&str> = TARGETS
        .iter()
        .chain(defib_rescue::fuzzing::TARGETS)
        .map(|(n, _)| *n)
        .collect();
    let Ok(dir) = std::fs::read_dir(regressions()) else {
        return;
    };
    for e in dir.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() {
            assert!(
                known.contains(&name.as_str()),
                "fuzz/regressions/{name} is no fuzz target"
            );
        }
    }
    // And every target has its fuzz_targets file, so the lists match.
    let targets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets");
    for n in &known {
        assert!(
            targets.join(format!("{n}.rs")).is_file(),
            "no fuzz/fuzz_targets/{n}.rs"
        );
    }
}

fn read_at(f: &mut std::fs::File, at: u64, len: usize) -> std::io::Result<Vec<u8>> {
    f.seek(SeekFrom::Start(at))?;
    let mut b = vec![0u8; len];
    f.read_exact(&mut b)?;
    Ok(b)
}

/// A BitLocker image's boot sector and first FVE metadata block (64 KiB),
/// moved to 4 KiB with the three offsets pointing there: the metadata sits
/// ~33 MiB into the real images, far past a useful fuzz input.
fn compact_bitlocker(img: &Path) -> Option<Vec<u8>> {
    let mut f = std::fs::File::open(img).ok()?;
    let mut boot = read_at(&mut f, 0, 512).ok()?;
    let at = match &boot[3..11] {
        b"-FVE-FS-" => 0xA0 + 16,
        b"MSWIN4.1" => 0x1A8 + 16,
        _ => return None,
    };
    let first = u64::from_le_bytes(boot[at..at + 8].try_into().ok()?);
    let block = read_at(&mut f, first, 64 * 1024).ok()?;
    for i in 0..3 {
        boot[at + i * 8..at + i * 8 + 8].copy_from_slice(&4096u64.to_le_bytes());
    }
    let mut out = boot;
    out.resize(4096, 0);
    out.extend_from_slice(&block);
    // Trailing zeros only slow the fuzzer.
    while out.len() > 4096 + 512 && out.last() == Some(&0) {
        out.pop();
    }
    Some(out)
}

/// The NTFS boot sector with the MFT moved to cluster 1, followed by MFT
/// records 0-3 (`$Volume` is 3), from the volume at `offset` in `disk`.
fn compact_ntfs(disk: &[u8], offset: usize) -> Option<Vec<u8>> {
    let boot = disk.get(offset..offset + 512)?;
    let bps = u16::from_le_bytes([boot[0xB], boot[0xC]]) as usize;
    let cluster = bps * boot[0xD] as usize;
    let mft = u64::from_le_bytes(boot[0x30..0x38].try_into().ok()?) as usize * cluster;
    let cpr = boot[0x40] as i8;
    let rec = if cpr < 0 {
        1usize << -cpr
    } else {
        cpr as usize * cluster
    };
    let mut out = boot.to_vec();
    out[0x30..0x38].copy_from_slice(&1u64.to_le_bytes());
    out.resize(cluster, 0);
    out.extend_from_slice(disk.get(offset + mft..offset + mft + 4 * rec)?);
    Some(out)
}

/// Writes the seed corpus to `$DEFIB_FUZZ_SEEDS/<target>/`, from
/// `$DEFIB_FUZZ_CORPORA` (the shared real-world corpora, BitLocker images
/// already extracted to `$DEFIB_FUZZ_BITLOCKER`) and synthetic inputs.
#[test]
#[ignore = "seed preparation for scripts/fuzz, not a check"]
fn write_fuzz_seeds() {
    let out = PathBuf::from(std::env::var_os("DEFIB_FUZZ_SEEDS").expect("DEFIB_FUZZ_SEEDS"));
    let corpora =
        PathBuf::from(std::env::var_os("DEFIB_FUZZ_CORPORA").expect("DEFIB_FUZZ_CORPORA"));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let put = |target: &str, name: &str, data: &[u8]| {
        let d = out.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), data).unwrap();
    };
    for (t, n, d) in seeds().unwrap() {
        put(t, &n, &d);
    }
    // Real hives; the xz'd SYSTEM hives are 3-12 MiB, too slow per run.
    for h in ["minimal", "special", "nt-hive-testhive", "yarp-EmptyHive"] {
        put(
            "winreg",
            h,
            &std::fs::read(corpora.join("registry").join(h)).unwrap(),
        );
    }
    for p in ["jobexec.dll", "kernel32.dll", "shimeng.dll"] {
        put("pe", p, &std::fs::read(corpora.join("pe").join(p)).unwrap());
    }
    let mut disk = Vec::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(corpora.join("ntfs/windows-ntfs-32m.raw.gz")).unwrap(),
    )
    .read_to_end(&mut disk)
    .unwrap();
    put(
        "volstate",
        "ntfs-compact",
        &compact_ntfs(&disk, 128 * 512).expect("NTFS seed"),
    );
    put("volstate", "ntfs-boot", &disk[128 * 512..129 * 512]);
    if let Some(bl) = std::env::var_os("DEFIB_FUZZ_BITLOCKER") {
        for e in std::fs::read_dir(bl).unwrap().filter_map(|e| e.ok()) {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "img") {
                let c = compact_bitlocker(&p).expect("BitLocker seed");
                put("volstate", &e.file_name().to_string_lossy(), &c);
            }
        }
    }
    for h in [&b"hibr"[..], b"HIBR", b"wake", b"RSTR", &[0u8; 8]] {
        put("volstate", &format!("hiberfil-{}", hex::encode(h)), h);
    }
    for e in std::fs::read_dir(repo.join("payloads/playbooks")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            put(
                "playbook",
                &p.file_name().unwrap().to_string_lossy(),
                &std::fs::read(&p).unwrap(),
            );
        }
    }
    let idx = defib_rescue::store::Index {
        schema: defib_rescue::store::SCHEMA,
        entries: vec![serde_json::from_value(serde_json::json!({
            "product": "Windows XP Professional", "build": 2600, "arch": "x86",
            "path": "WINDOWS\\system32\\svchost.exe", "file_version": "5.1.2600.5512",
            "sha256": "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f",
            "size": 68, "source": "REF-XP3"
        }))
        .unwrap()],
    };
    put(
        "store_index",
        "index.json",
        idx.to_json().unwrap().as_bytes(),
    );
    for e in defib_builder::bootmenu::entries(defib_rescue::bootargs::After::default()) {
        put("bootargs", &e.id, e.cmdline.as_bytes());
    }
    put(
        "bootargs",
        "pxe",
        b"BOOT_IMAGE=/vmlinuz defib.mode=scan defib.wait=30 defib.medium=net ip=dhcp \"defib.report=http://10.0.0.1/r/\" BOOTIF=01-52-54-00-12-34-56",
    );
    // What `defib serve` writes: https URLs and the certificate's pin.
    put(
        "bootargs",
        "serve-tls",
        b"BOOT_IMAGE=/vmlinuz defib.medium=pxe defib.report=https://10.77.0.1/defib-reports/ defib.tls=sha256:9c7a38f9f4e19f279e4e506db004e667adc9fee01b338cfb4f405276a588625e defib.keys=https://10.77.0.1/defib-keys/",
    );
    for (n, s) in [
        ("dhcp", "dhcp"),
        ("static", "10.0.0.5::10.0.0.1:255.255.255.0:pc:eth0:none"),
        ("url", "http://10.0.0.1:8080/reports/"),
        ("https-url", "https://10.77.0.1:8443/defib-reports/"),
        ("bootif", "01-52-54-00-12-34-56"),
        (
            "lease",
            "interface=eth0\nip=10.0.2.15\nsubnet=255.255.255.0\nrouter=10.0.2.2 10.0.2.3\n",
        ),
        ("status", "HTTP/1.1 201 Created\r\n\r\n"),
    ] {
        put("net", n, s.as_bytes());
    }
    put(
        "journal",
        "journal.jsonl",
        concat!(
            r#"{"seq":1,"state":"intent","op":"neutralize","playbook":"mcafee-dat-5958","path":"WINDOWS\\system32\\x.dat","vault":"vault/WINDOWS/system32/x.dat","sha256_before":"275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f","time":"2010-04-21T14:00:00Z"}"#,
            "\n",
            r#"{"seq":1,"state":"done","op":"neutralize","playbook":"mcafee-dat-5958","path":"WINDOWS\\system32\\x.dat","time":"2010-04-21T14:00:01Z"}"#,
            "\n{\"seq\":2,\"sta"
        )
        .as_bytes(),
    );
    put(
        "buildinfo",
        "build.json",
        br#"{"build_id":"ab12","defib_version":"0.1.0","kernel":"6.12.57+deb13-amd64","source_date_epoch":1700000000}"#,
    );
    // Say which seeds the harnesses accept: a refused real-world seed
    // means the fuzzer starts shallow.
    for (t, h) in TARGETS.iter().chain(defib_rescue::fuzzing::TARGETS) {
        let Ok(dir) = std::fs::read_dir(out.join(t)) else {
            continue;
        };
        for e in dir.filter_map(|e| e.ok()) {
            let verdict = match h(&std::fs::read(e.path()).unwrap()) {
                Ok(()) => "read".to_string(),
                Err(err) => format!("refused: {err:#}"),
            };
            eprintln!("seed {t}/{}: {verdict}", e.file_name().to_string_lossy());
        }
    }
}
