//! defib's builder: turns Debian's signed boot parts, our static rescue
//! binary and the payloads into a bootable USB image, and reads used images
//! back.

pub mod bios;
pub mod bootmenu;
pub mod build;
pub mod cpio;
pub mod deb;
pub mod fetch;
pub mod fleet;
pub mod fleethtml;
#[doc(hidden)]
pub mod fuzzing;
pub mod image;
pub mod inspect;
pub mod iso;
pub mod keys;
pub mod kmod;
pub mod layer;
pub mod manifest;
pub mod progress;
pub mod pxe;
pub mod qemu;
pub mod sbat;
pub mod serve;
pub mod servetls;
pub mod size;
pub mod store;
pub mod storesync;
pub mod template;

/// Whether a build-host tool is on `PATH`.
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Lowercase hex SHA-256 of `data` (the rescue's, so both sides spell it alike).
pub use defib_rescue::hash::sha256_hex;
