//! Shared helpers for the tests that need real parts: the image that
//! scripts/build wrote, the static rescue binary, QEMU and OVMF.
//!
//! Every helper fails with a message saying what is missing and how to get
//! it; none skips.

#![allow(dead_code)]

pub mod bigstore;
pub mod debian_root;
pub mod victim;

use defib_builder::image::UsbImage;
use defib_builder::inspect;
use defib_builder::qemu::{self, Boot, Firmware, Outcome};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A file named by an environment variable that scripts/test sets.
pub fn env_file(var: &str) -> PathBuf {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "{var} is not set: run these tests through scripts/test, which builds the image first"
        )
    });
    assert!(
        p.is_file(),
        "{var}={} does not exist: run scripts/build",
        p.display()
    );
    p
}

pub fn image() -> PathBuf {
    env_file("DEFIB_IMAGE")
}

/// The hybrid ISO scripts/build writes beside the image.
pub fn iso() -> PathBuf {
    env_file("DEFIB_ISO")
}

/// A private copy of the image a test may boot and write to.
pub fn image_copy(dir: &Path) -> PathBuf {
    let dst = dir.join("stick.img");
    std::fs::copy(image(), &dst).expect("copying the image");
    dst
}

pub const UUID: &str = "5eed0000-defb-4000-8000-00000000c0de";

/// Boots `stick` with `firmware` until QEMU exits or `timeout` passes.
pub fn boot_stick(stick: &Path, firmware: Firmware, scratch: &Path, timeout: Duration) -> Outcome {
    let mut b = Boot::new(firmware, scratch);
    b.stick = Some(stick.to_path_buf());
    b.uuid = Some(UUID.to_string());
    b.timeout = timeout;
    qemu::run(&b).expect("running qemu")
}

/// The one report the rescue left on the stick.
pub fn single_report(stick: &Path) -> serde_json::Value {
    let img = UsbImage::open(stick).expect("opening the stick after the boot");
    let reports = inspect::reports(&img).expect("listing reports");
    assert_eq!(
        reports.len(),
        1,
        "expected exactly one report, found {:?}",
        reports.iter().map(|r| &r.name).collect::<Vec<_>>()
    );
    let r = &reports[0];
    assert!(
        r.error.is_none(),
        "report {} unreadable: {:?}",
        r.name,
        r.error
    );
    r.report.clone()
}
