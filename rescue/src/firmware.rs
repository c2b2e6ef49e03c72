//! Firmware facts: UEFI or legacy BIOS, and whether Secure Boot is on.
//!
//! This only reads what the kernel exposes (`/sys/firmware/efi` and the
//! `SecureBoot` variable in efivarfs); it never writes an EFI variable.

use crate::report::Firmware;
use std::path::Path;

/// efivarfs file of the UEFI global `SecureBoot` variable: name, then the
/// EFI_GLOBAL_VARIABLE vendor GUID (UEFI 2.10, section 3.3).
pub const SECURE_BOOT_VAR: &str = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// `uefi` if the kernel was booted through UEFI runtime services.
pub fn firmware(root: &Path) -> Firmware {
    if root.join("sys/firmware/efi").is_dir() {
        Firmware::Uefi
    } else {
        Firmware::Bios
    }
}

/// Secure Boot state and, when it could not be read cleanly, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecureBoot {
    pub on: bool,
    pub note: Option<String>,
}

/// Decodes an efivarfs file: 4 bytes of attributes (little-endian u32),
/// then the variable's data, here one byte: 1 = enabled, 0 = disabled
/// (UEFI 2.10, section 3.3, "SecureBoot").
pub fn decode_secure_boot(file: &[u8]) -> SecureBoot {
    match file {
        [_, _, _, _, 1] => SecureBoot {
            on: true,
            note: None,
        },
        [_, _, _, _, 0] => SecureBoot {
            on: false,
            note: None,
        },
        [_, _, _, _, b] => SecureBoot {
            on: false,
            note: Some(format!(
                "SecureBoot variable holds unexpected value {b}; taken as off"
            )),
        },
        _ => SecureBoot {
            on: false,
            note: Some(format!(
                "SecureBoot variable is {} bytes, expected 5; taken as off",
                file.len()
            )),
        },
    }
}

/// Reads the Secure Boot state from `<root>/sys/firmware/efi/efivars`.
pub fn secure_boot(root: &Path, fw: Firmware) -> SecureBoot {
    if fw == Firmware::Bios {
        return SecureBoot {
            on: false,
            note: None,
        };
    }
    let p = root.join("sys/firmware/efi/efivars").join(SECURE_BOOT_VAR);
    match std::fs::read(&p) {
        Ok(bytes) => decode_secure_boot(&bytes),
        Err(e) => SecureBoot {
            on: false,
            note: Some(format!(
                "cannot read SecureBoot variable ({e}); taken as off"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_on_off_and_odd_files() {
        // Attributes 0x06 = BOOTSERVICE_ACCESS | RUNTIME_ACCESS.
        assert_eq!(
            decode_secure_boot(&[6, 0, 0, 0, 1]),
            SecureBoot {
                on: true,
                note: None
            }
        );
        assert_eq!(
            decode_secure_boot(&[6, 0, 0, 0, 0]),
            SecureBoot {
                on: false,
                note: None
            }
        );
        let short = decode_secure_boot(&[6, 0, 0, 0]);
        assert!(!short.on && short.note.unwrap().contains("4 bytes"));
        let odd = decode_secure_boot(&[6, 0, 0, 0, 7]);
        assert!(!odd.on && odd.note.is_some());
        assert!(!decode_secure_boot(&[6, 0, 0, 0, 1, 0]).on);
    }

    #[test]
    fn reads_from_a_fake_efivarfs() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(firmware(dir.path()), Firmware::Bios);
        assert_eq!(secure_boot(dir.path(), Firmware::Bios).note, None);
        let vars = dir.path().join("sys/firmware/efi/efivars");
        std::fs::create_dir_all(&vars).unwrap();
        assert_eq!(firmware(dir.path()), Firmware::Uefi);
        let absent = secure_boot(dir.path(), Firmware::Uefi);
        assert!(!absent.on && absent.note.is_some());
        std::fs::write(vars.join(SECURE_BOOT_VAR), [6, 0, 0, 0, 1]).unwrap();
        assert!(secure_boot(dir.path(), Firmware::Uefi).on);
    }
}
