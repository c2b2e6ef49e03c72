//! The known-good store on the medium, end to end: an image whose store is
//! over 400 MB (synthetic objects plus XP SP3's svchost.exe) boots under
//! OVMF with Secure Boot enforcing in a 256 MiB machine and repairs a
//! McAfee DAT 5958 victim whose svchost.exe exists only in that store,
//! reading the one object it needs from the stick. Then one byte of that
//! object is flipped on the stick: the next run refuses it, says so, and
//! leaves the second victim as it was.

mod common;

use common::victim::{self, McafeeSvchost};
use common::*;
use defib_builder::image::{add_file_to_image, UsbImage};
use defib_builder::inspect;
use defib_builder::qemu::{self, Boot, Bus, Firmware, Outcome};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Generous: 256 MiB under TCG on a loaded two-core machine.
const TIMEOUT: Duration = Duration::from_secs(900);
/// Synthetic objects of 1 MiB each.
const SYNTHETIC: usize = 400;
const MIB: usize = bigstore::OBJECT_SIZE;

/// The repo's playbooks and a store of XP's svchost.exe plus `SYNTHETIC`
/// named objects (named entries are never restore candidates, so they
/// only weigh). Returns the payloads folder and svchost's SHA-256.
fn big_payloads(dir: &Path) -> (PathBuf, String) {
    let payloads = dir.join("payloads");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../payloads/playbooks");
    std::fs::create_dir_all(payloads.join("playbooks")).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, payloads.join("playbooks").join(p.file_name().unwrap())).unwrap();
    }
    let svchost = victim::store_payloads(&payloads).unwrap();
    bigstore::add_synthetic(&payloads.join("store"), SYNTHETIC).unwrap();
    (payloads, svchost)
}

fn build(payloads: &Path, out: &Path) {
    let t = Instant::now();
    let o = Command::new(env_file("DEFIB_DEFIB"))
        .args(["build", "--offline", "--out"])
        .arg(out)
        .arg("--payloads")
        .arg(payloads)
        .arg("--rescue")
        .arg(env_file("DEFIB_RESCUE"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "defib build: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!(
        "built {} in {:.1} s: {} MiB",
        out.display(),
        t.elapsed().as_secs_f64(),
        std::fs::metadata(out).unwrap().len() >> 20
    );
}

fn boot(stick: &Path, disk: &Path, scratch: &Path) -> Outcome {
    let mut b = Boot::new(Firmware::UefiSb, scratch);
    b.stick = Some(stick.to_path_buf());
    b.disks = vec![(disk.to_path_buf(), Bus::Ahci)];
    b.uuid = Some(UUID.to_string());
    b.timeout = TIMEOUT;
    b.memory_mib = 256;
    let out = qemu::run(&b).expect("running qemu");
    assert!(out.exited, "QEMU did not end by itself:\n{}", out.text());
    out
}

/// The stick's reports, by run id.
fn report_of_run_other_than(stick: &Path, other: Option<&str>) -> serde_json::Value {
    let img = UsbImage::open(stick).unwrap();
    let rs: Vec<_> = inspect::reports(&img)
        .unwrap()
        .into_iter()
        .map(|r| r.report)
        .filter(|r| other.is_none_or(|o| r["run_id"] != o))
        .collect();
    assert_eq!(rs.len(), 1, "{rs:#?}");
    rs.into_iter().next().unwrap()
}

fn restore_action(r: &serde_json::Value) -> serde_json::Value {
    r["windows"][0]["playbooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "mcafee-dat-5958")
        .unwrap()["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "restore")
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn a_400_mb_store_on_the_stick_repairs_in_256_mib() {
    let dir = tempfile::tempdir().unwrap();
    let (payloads, svchost) = big_payloads(dir.path());
    let stick = dir.path().join("stick.img");
    build(&payloads, &stick);

    // The payload segment keeps the index only; the objects are on the ESP.
    let img = UsbImage::open(&stick).unwrap();
    let seg = img.read_file(defib_builder::bootmenu::PAYLOADS).unwrap();
    assert!(seg.len() < MIB, "payloads.img is {} bytes", seg.len());
    let object = format!("defib/store/objects/{svchost}");
    assert_eq!(
        defib_builder::sha256_hex(&img.read_file(&object).unwrap()),
        svchost
    );
    let on_stick = defib_builder::storesync::medium_store(&img, false);
    assert_eq!(on_stick.entries, SYNTHETIC + 1, "{on_stick:?}");
    assert!(on_stick.bytes >= (SYNTHETIC * MIB) as u64);

    let v = victim::make_xp_mcafee(dir.path(), McafeeSvchost::InStore).unwrap();
    let out = boot(&stick, &v.disk, dir.path());
    assert!(
        out.contains("defib: verdict repaired"),
        "not repaired:\n{}",
        out.text()
    );
    let r = report_of_run_other_than(&stick, None);
    assert_eq!(r["verdict"], "repaired", "{r:#}");
    let restore = restore_action(&r);
    assert!(
        restore["source"]
            .as_str()
            .unwrap()
            .contains("known-good store"),
        "{restore:#}"
    );
    assert_eq!(restore["sha256_after"], svchost.as_str());
    // The index in force is the stick's, and the report says so.
    let store = &r["store"];
    assert!(
        store["index"]
            .as_str()
            .unwrap()
            .ends_with("defib/store/index.json"),
        "{store:#}"
    );
    assert_eq!(store["entries"], SYNTHETIC + 1);
    // From the host: svchost.exe is back, byte for byte.
    assert_eq!(
        victim::sha256_of(&v, victim::XP_SVCHOST)
            .unwrap()
            .as_deref(),
        Some(svchost.as_str())
    );
    for l in out
        .text()
        .lines()
        .filter(|l| l.contains("memory: rescue peak"))
    {
        eprintln!("{l}");
    }

    // One byte of the object flipped on the stick: refused, reported, and
    // a second victim left exactly as it was.
    let mut bad = img.read_file(&object).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    add_file_to_image(&stick, &object, &bad).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let v2 = victim::make_xp_mcafee(dir2.path(), McafeeSvchost::InStore).unwrap();
    let before = victim::disk_sha256(&v2).unwrap();
    let out = boot(&stick, &v2.disk, dir2.path());
    assert!(
        out.contains("defib: verdict needs-attention"),
        "{}",
        out.text()
    );
    let r2 = report_of_run_other_than(&stick, r["run_id"].as_str());
    assert_eq!(r2["verdict"], "needs-attention", "{r2:#}");
    let text = serde_json::to_string(&r2).unwrap();
    assert!(
        text.contains(&format!("{object} is corrupt")),
        "the report names the corrupt object: {r2:#}"
    );
    assert_eq!(
        victim::disk_sha256(&v2).unwrap(),
        before,
        "a refused restore must not touch the disk"
    );
    assert_eq!(victim::sha256_of(&v2, victim::XP_SVCHOST).unwrap(), None);
}
