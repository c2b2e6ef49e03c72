//! The firmware inventory of 2026's CA rotation, end to end: OVMF with
//! Secure Boot booted from variable stores made by virt-firmware (an
//! independent tool that also ships Microsoft's public certificates) —
//! Microsoft's 2011 set, a 2023-only set, one without any third-party CA
//! and one in setup mode. Each report lists exactly the certificates the
//! store holds, with the 2023 judgement; the store without a third-party
//! CA refuses the stick (Debian's shim is signed by Microsoft's UEFI CA),
//! which the test proves from the firmware's own words.

mod common;

use common::*;
use defib_builder::qemu::{self, Boot, Firmware};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const MICROSOFT: &str = "77fa9abd-0359-4d32-bd60-28f4e78f784b";
const PK_CN: &str = "defib test PK";

/// virt-firmware's folder of public certificates.
fn certs() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import virt.firmware, os; print(os.path.dirname(virt.firmware.__file__))",
        ])
        .output()
        .expect("python3 is needed (scripts/setup --test installs it)");
    assert!(
        out.status.success(),
        "virt-firmware is missing: scripts/setup --test installs it from PyPI ({})",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("certs/microsoft.com")
}

/// A variable store from OVMF's empty one: a generated PK (also in KEK,
/// as virt-firmware enrols it), Microsoft's KEK of `kek` ("2011", "2023",
/// "all"), and exactly the `db` certificates named.
fn store(dir: &Path, name: &str, kek: &str, db: &[&str]) -> PathBuf {
    let out = dir.join(format!("{name}.fd"));
    let mut c = Command::new("python3");
    c.args(["-m", "virt.firmware.vars", "-i", qemu::OVMF_VARS])
        .args(["--enroll-generate", PK_CN, "--microsoft-kek", kek])
        .args(["--microsoft-db", "none", "--sb", "-o"])
        .arg(&out);
    for pem in db {
        c.arg("--add-db").arg(MICROSOFT).arg(certs().join(pem));
    }
    let st = c.output().expect("running virt-fw-vars");
    assert!(
        st.status.success(),
        "virt-fw-vars: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    out
}

fn boot(dir: &Path, vars: &Path, stop_on: Option<&str>) -> (qemu::Outcome, PathBuf) {
    let stick = image_copy(dir);
    let mut b = Boot::new(Firmware::UefiSb, dir);
    b.stick = Some(stick.clone());
    b.uuid = Some(UUID.to_string());
    b.vars = Some(vars.to_path_buf());
    b.stop_on = stop_on.map(str::to_string);
    b.timeout = Duration::from_secs(300);
    (qemu::run(&b).expect("running qemu"), stick)
}

/// SHA-256 of a PEM certificate's DER, through openssl (independent of
/// the rescue's parser).
fn der_sha256(pem: &str) -> String {
    let o = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(certs().join(pem))
        .output()
        .expect("openssl is needed (scripts/setup --test installs it)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    defib_builder::sha256_hex(&o.stdout)
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Boots `vars`, and checks the report's inventory against the store:
/// the subjects and, for db, the certificates' own SHA-256 (`db_pems`).
fn check(name: &str, vars: &Path, kek: &[&str], db: &[&str], db_pems: &[&str], ready: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (out, stick) = boot(dir.path(), vars, None);
    assert!(
        out.exited,
        "{name}: QEMU did not end by itself:\n{}",
        out.text()
    );
    let r = single_report(&stick);
    let sb = &r["firmware"]["secure_boot"];
    assert_eq!(sb["enabled"], true, "{name}: {sb:#}");
    assert_eq!(sb["setup_mode"], false, "{name}: {sb:#}");
    assert_eq!(strings(&sb["pk"]), vec![PK_CN], "{name}: {sb:#}");
    let mut want_kek = vec![PK_CN];
    want_kek.extend(kek);
    assert_eq!(strings(&sb["kek"]), want_kek, "{name}: {sb:#}");
    assert_eq!(strings(&sb["db"]), db, "{name}: {sb:#}");
    let want: Vec<String> = db_pems.iter().map(|p| der_sha256(p)).collect();
    assert_eq!(strings(&sb["db_sha256"]), want, "{name}: {sb:#}");
    assert_eq!(sb["ca_2023_ready"]["verdict"], ready, "{name}: {sb:#}");
    // virt-firmware adds one placeholder hash to an empty dbx.
    assert_eq!(sb["dbx_entries"], 1, "{name}: {sb:#}");
    // Shim published the SBAT level it applied.
    let sbat = sb["sbat_level"].as_str().unwrap_or_default();
    assert!(sbat.starts_with("sbat,1,"), "{name}: {sb:#}");
    assert!(
        out.contains("firmware: Secure Boot on; KEK: "),
        "{name}: no firmware line on the screen:\n{}",
        out.text()
    );
}

#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn microsoft_2011_set_is_listed_and_needs_the_2023_update() {
    let dir = tempfile::tempdir().unwrap();
    let pems = ["windows-2011.pem", "ms-uefi-2011.pem"];
    let vars = store(dir.path(), "ms2011", "2011", &pems);
    check(
        "2011",
        &vars,
        &["Microsoft Corporation KEK CA 2011"],
        &[
            "Microsoft Windows Production PCA 2011",
            "Microsoft Corporation UEFI CA 2011",
        ],
        &pems,
        "needs-update",
    );
}

#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn a_2023_only_set_boots_the_dual_signed_shim_and_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let pems = ["windows-2023.pem", "ms-uefi-2023.pem"];
    let vars = store(dir.path(), "ms2023", "2023", &pems);
    check(
        "2023",
        &vars,
        &["Microsoft Corporation KEK 2K CA 2023"],
        &["Windows UEFI CA 2023", "Microsoft UEFI CA 2023"],
        &pems,
        "ready",
    );
}

/// A secured-core PC: only Windows' own CAs in db. The firmware refuses
/// the stick's shim; defib never starts (nothing to report), and the
/// technician's guide says what to do (allow the third-party CA).
#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn without_a_third_party_ca_the_stick_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let vars = store(
        dir.path(),
        "windows-only",
        "all",
        &["windows-2011.pem", "windows-2023.pem"],
    );
    let (out, stick) = boot(dir.path(), &vars, Some("Access Denied"));
    let text = out.text();
    assert!(
        text.contains("Access Denied"),
        "the firmware did not refuse the shim:\n{text}"
    );
    assert!(
        !text.contains("defib: verdict") && !text.contains("Linux version"),
        "something booted past the firmware:\n{text}"
    );
    let img = defib_builder::image::UsbImage::open(&stick).unwrap();
    assert!(
        defib_builder::inspect::reports(&img).unwrap().is_empty(),
        "a report without a boot"
    );
}

/// OVMF's empty store: no PK, so setup mode, Secure Boot off, nothing to
/// list; the judgement is "unknown" and says why.
#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn setup_mode_boots_and_reports_empty_databases() {
    let dir = tempfile::tempdir().unwrap();
    let (out, stick) = boot(dir.path(), Path::new(qemu::OVMF_VARS), None);
    assert!(out.exited, "QEMU did not end by itself:\n{}", out.text());
    let r = single_report(&stick);
    let sb = &r["firmware"]["secure_boot"];
    assert_eq!(sb["enabled"], false, "{sb:#}");
    assert_eq!(sb["setup_mode"], true, "{sb:#}");
    for db in ["pk", "kek", "db"] {
        assert!(strings(&sb[db]).is_empty(), "{db}: {sb:#}");
    }
    assert_eq!(sb["ca_2023_ready"]["verdict"], "unknown", "{sb:#}");
    assert!(
        sb["ca_2023_ready"]["why"]
            .as_str()
            .unwrap()
            .contains("setup mode"),
        "{sb:#}"
    );
    assert!(
        out.contains("firmware: Secure Boot setup mode"),
        "{}",
        out.text()
    );
}
