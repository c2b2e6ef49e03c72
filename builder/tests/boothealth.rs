//! End to end, boot health: a Windows 10 CrowdStrike victim on a GPT disk
//! whose EFI system partition (FAT) holds a BCD store, built with hivex
//! from the empty hive Windows wrote, with `safeboot` set on the default
//! entry: someone deleted the channel file through Safe Mode, or is about
//! to. The image, booted under OVMF with Secure Boot enforcing, finds the
//! ESP on the victim's disk, repairs the channel file and clears the flag;
//! the host then reads the store with hivex, finds the original in the
//! vault, and `rescue undo` (host mode, `--esp`) puts it back byte for
//! byte.

mod common;

use common::victim::{self, Victim};
use common::*;
use defib_builder::qemu::{self, Boot, Bus, Firmware};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(360);

/// `hivexregedit --export` of a hive's bytes: hivex is the independent
/// reader that says the edited store is a well-formed hive.
fn export(dir: &Path, bytes: &[u8]) -> String {
    let p = dir.join("BCD.export-input");
    std::fs::write(&p, bytes).unwrap();
    let tool = victim::tool("hivexregedit", "libwin-hivex-perl").unwrap();
    let o = Command::new(tool)
        .args(["--export", "--prefix", r"HKEY_LOCAL_MACHINE\BCD"])
        .arg(&p)
        .arg("\\")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "hivex cannot read the store: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn playbook<'a>(w: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    w["playbooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("no playbook {id} in {w:#}"))
}

#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn safe_mode_flag_on_the_esp_is_cleared_and_undo_puts_the_store_back() {
    let dir = tempfile::tempdir().unwrap();
    let (v, original): (Victim, Vec<u8>) =
        victim::make_win10_crowdstrike_safe_mode(dir.path()).unwrap();
    // The fixture is what it claims: hivex reads safeboot on the default.
    let before = export(dir.path(), &original);
    assert!(before.contains(&format!(
        r"[HKEY_LOCAL_MACHINE\BCD\Objects\{}\Elements\25000080]",
        victim::BCD_LOADER
    )));

    let stick = image_copy(dir.path());
    let mut b = Boot::new(Firmware::UefiSb, dir.path());
    b.stick = Some(stick.clone());
    b.disks = vec![(v.disk.clone(), Bus::Ahci)];
    b.uuid = Some(UUID.to_string());
    b.timeout = TIMEOUT;
    let out = qemu::run(&b).expect("running qemu");
    assert!(out.exited, "QEMU did not end by itself:\n{}", out.text());
    assert!(
        out.contains("defib: verdict repaired"),
        "not repaired:\n{}",
        out.text()
    );

    let r = single_report(&stick);
    assert_eq!(r["verdict"], "repaired", "{r:#}");
    let w = &r["windows"][0];
    assert_eq!(
        playbook(w, "crowdstrike-c00000291")["status"],
        "repaired",
        "{w:#}"
    );
    let sm = playbook(w, "crowdstrike-safe-mode");
    assert_eq!(sm["status"], "repaired", "{sm:#}");
    let action = &sm["actions"][0];
    assert_eq!(action["kind"], "bcd");
    assert_eq!(action["status"], "done", "{action:#}");
    let want_before = defib_rescue::journal::sha256_bytes(&original);
    assert_eq!(action["sha256_before"], want_before.as_str());

    // The report's boot health is read after the repair: no Safe Mode.
    let h = &w["boot_health"];
    assert_eq!(h["bcd"]["status"], "read", "{h:#}");
    assert_eq!(
        h["bcd"]["store"],
        r"system partition \EFI\Microsoft\Boot\BCD"
    );
    assert_eq!(h["bcd"]["default_entry"], victim::BCD_LOADER);
    assert!(h["bcd"].get("safeboot").is_none(), "{h:#}");
    assert_eq!(h["bcd"]["bootstatuspolicy"], "IgnoreAllFailures");
    assert_eq!(h["bcd"]["recoveryenabled"], true);
    // This victim has no winload.efi: said on the report and the screen.
    assert_eq!(h["bcd"]["path_exists"], false);
    assert!(
        out.contains(r"boot: the Windows loader the default entry names (\Windows\system32\winload.efi) is not on this volume -> rebuild the boot files"),
        "{}",
        out.text()
    );

    // From the host: hivex reads the store; only the safeboot key is gone.
    let after = victim::esp_read(&v, victim::ESP_BCD).unwrap().unwrap();
    assert_ne!(after, original);
    assert_eq!(
        action["sha256_after"],
        defib_rescue::journal::sha256_bytes(&after).as_str()
    );
    let exported = export(dir.path(), &after);
    assert!(!exported.contains("25000080"), "{exported}");
    let strip = |e: &str| -> Vec<String> {
        e.split("\n\n")
            .filter(|b| !b.contains("25000080"))
            .map(|b| b.trim().to_string())
            .collect()
    };
    assert_eq!(strip(&exported), strip(&before), "other keys changed");
    // No temp file left on the ESP.
    assert_eq!(
        victim::esp_list(&v, r"EFI\Microsoft\Boot").unwrap(),
        ["BCD"]
    );

    // The vault on the Windows volume holds the original, byte for byte,
    // and the journal says which volume the store is on.
    let run = r["run_id"].as_str().unwrap().to_string();
    let vaulted = format!(r"defib\{run}\vault\system-partition\EFI\Microsoft\Boot\BCD");
    assert_eq!(
        victim::sha256_of(&v, &vaulted).unwrap().as_deref(),
        Some(want_before.as_str())
    );
    let journal = victim::read_file(&v, &format!(r"defib\{run}\journal.jsonl"))
        .unwrap()
        .unwrap();
    let bcd_steps: Vec<serde_json::Value> = String::from_utf8(journal)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|s| s["op"] == "bcd")
        .collect();
    assert_eq!(bcd_steps.len(), 2, "intent and done: {bcd_steps:#?}");
    assert_eq!(bcd_steps[1]["state"], "done");
    assert_eq!(bcd_steps[1]["volume"], "system");
    assert_eq!(bcd_steps[1]["path"], r"EFI\Microsoft\Boot\BCD");

    // Host-mode undo on a copy of the volume with the ESP as a folder puts
    // the store back byte for byte. (The channel files' undo is proved by
    // the engine and host_cli tests: ntfs-3g's FUSE mount refuses the
    // no-replace rename undo moves files back with, so on this mount only
    // the store's step is expected to go through.)
    let esp = dir.path().join("esp");
    victim::esp_extract(&v, &esp).unwrap();
    victim::with_volume_copy_rw(&v, |root| {
        let u = defib_rescue::host::undo(root, Some(&esp), Some(&run))?;
        assert!(
            u.restored.iter().any(|p| p == r"EFI\Microsoft\Boot\BCD"),
            "{u:#?}"
        );
        assert!(u.problems.iter().all(|p| !p.contains("BCD")), "{u:#?}");
        Ok(())
    })
    .unwrap();
    assert_eq!(
        std::fs::read(esp.join("EFI/Microsoft/Boot/BCD")).unwrap(),
        original,
        "undo did not restore the store byte for byte"
    );
}
