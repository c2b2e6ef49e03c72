//! Machine identity from SMBIOS, as the kernel exposes it in
//! `/sys/class/dmi/id`.
//!
//! This does not parse SMBIOS tables; it reads four sysfs files and throws
//! away the placeholder strings vendors ship, so a report never names a
//! machine "To Be Filled By O.E.M.".

use crate::report::Machine;
use std::path::Path;

/// Strings boards carry when the vendor filled nothing in (compared without
/// case). Seen across AMI/Insyde/Phoenix firmware and in QEMU.
const PLACEHOLDERS: &[&str] = &[
    "not specified",
    "to be filled by o.e.m.",
    "default string",
    "system serial number",
    "system product name",
    "system manufacturer",
    "none",
    "n/a",
    "not applicable",
    "not available",
    "0",
    "0123456789",
];

/// Trims a DMI value and returns `None` for empty strings, placeholders and
/// UUIDs that are all zeros or all ones (SMBIOS 3.x, section 7.2.1: "all
/// bits set" means not present, all zeros means present but not set).
pub fn clean(value: &str) -> Option<String> {
    let v = value.trim();
    if v.is_empty() || PLACEHOLDERS.iter().any(|p| v.eq_ignore_ascii_case(p)) {
        return None;
    }
    let hex: Vec<char> = v.chars().filter(|c| *c != '-').collect();
    let uuid_like = hex.len() == 32 && hex.iter().all(|c| c.is_ascii_hexdigit());
    if uuid_like
        && (hex.iter().all(|c| *c == '0') || hex.iter().all(|c| c.eq_ignore_ascii_case(&'f')))
    {
        return None;
    }
    Some(v.to_string())
}

/// Reads `<root>/sys/class/dmi/id/*`. Missing files (no SMBIOS, or not root
/// for the serial and UUID) read as null.
pub fn read_machine(root: &Path) -> Machine {
    let dir = root.join("sys/class/dmi/id");
    let get = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .ok()
            .and_then(|s| clean(&s))
    };
    Machine {
        product_uuid: get("product_uuid").map(|u| u.to_ascii_lowercase()),
        product_serial: get("product_serial"),
        sys_vendor: get("sys_vendor"),
        product_name: get("product_name"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_placeholders() {
        assert_eq!(clean("  PF3ABCDE \n").as_deref(), Some("PF3ABCDE"));
        assert_eq!(clean(""), None);
        assert_eq!(clean(" \n"), None);
        assert_eq!(clean("Not Specified"), None);
        assert_eq!(clean("To Be Filled By O.E.M.\n"), None);
        assert_eq!(clean("Default string"), None);
        assert_eq!(clean("DEFAULT STRING"), None);
        assert_eq!(clean("00000000-0000-0000-0000-000000000000"), None);
        assert_eq!(clean("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"), None);
        assert_eq!(
            clean("4c4c4544-0042-3510-8051-b4c04f4e3232").as_deref(),
            Some("4c4c4544-0042-3510-8051-b4c04f4e3232")
        );
        // A serial of zeros that is not UUID-shaped is still a serial.
        assert_eq!(clean("000000").as_deref(), Some("000000"));
    }

    #[test]
    fn reads_a_fake_dmi_dir() {
        let dir = tempfile::tempdir().unwrap();
        let id = dir.path().join("sys/class/dmi/id");
        std::fs::create_dir_all(&id).unwrap();
        std::fs::write(
            id.join("product_uuid"),
            "4C4C4544-0042-3510-8051-B4C04F4E3232\n",
        )
        .unwrap();
        std::fs::write(id.join("product_serial"), "To Be Filled By O.E.M.\n").unwrap();
        std::fs::write(id.join("sys_vendor"), "Dell Inc.\n").unwrap();
        let m = read_machine(dir.path());
        assert_eq!(
            m.product_uuid.as_deref(),
            Some("4c4c4544-0042-3510-8051-b4c04f4e3232")
        );
        assert_eq!(m.product_serial, None);
        assert_eq!(m.sys_vendor.as_deref(), Some("Dell Inc."));
        assert_eq!(m.product_name, None);
    }
}
