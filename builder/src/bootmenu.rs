//! The boot menu: the same entries and kernel command lines for every
//! loader (GRUB for UEFI now; syslinux and iPXE read the same table).
//!
//! Not a GRUB config generator in general: it writes the one menu defib
//! needs, with serial and screen consoles so a technician and a test harness
//! see the same thing.

use crate::manifest::BootEntry;
pub use defib_rescue::bootargs::{After, MediumHint, Mode};

/// Where the kernel and initramfs segments sit on the boot partition.
pub const KERNEL: &str = "defib/vmlinuz";
pub const INITRD: &str = "defib/initrd.img";
pub const PAYLOADS: &str = "defib/payloads.img";

/// Seconds the menu waits before the default entry.
pub const TIMEOUT: u32 = 5;

/// Kernel words every entry starts with. console=: screen first, serial
/// last; the kernel's /dev/console is the last one, the rescue writes to
/// all of them. panic=10 reboots a machine whose kernel panics instead of
/// leaving it hung on a ward.
pub const BASE_ARGS: &str = "console=tty0 console=ttyS0,115200 quiet panic=10";

/// Joins kernel command line words, skipping empty ones: the one place a
/// command line is put together.
pub fn cmdline<I, S>(words: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut s = String::new();
    for w in words {
        let w = w.as_ref().trim();
        if w.is_empty() {
            continue;
        }
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(w);
    }
    s
}

/// The title of a mode's menu entry, with its hotkey in brackets.
fn title(mode: Mode) -> &'static str {
    match mode {
        Mode::Auto => "Repair automatically [r]",
        Mode::Scan => "Scan only - change nothing [s]",
        Mode::Shell => "Rescue shell [h]",
    }
}

/// The three entries: repair (default), scan only, rescue shell.
pub fn entries(after: After) -> Vec<BootEntry> {
    Mode::ALL
        .iter()
        .map(|m| BootEntry {
            id: m.as_str().to_string(),
            title: title(*m).to_string(),
            cmdline: cmdline([
                BASE_ARGS.to_string(),
                m.arg(),
                after.arg().unwrap_or_default(),
            ]),
        })
        .collect()
}

/// The key that boots an entry straight from the menu (r, s, h): a
/// technician types one letter; tests send it over the serial console.
pub fn hotkey(id: &str) -> char {
    match id {
        "auto" => 'r',
        "scan" => 's',
        _ => 'h',
    }
}

/// `\EFI\debian\grub.cfg` for Debian's signed GRUB. `$root` is already the
/// partition GRUB was loaded from, so paths are plain.
pub fn grub_cfg(entries: &[BootEntry], build_id: &str) -> String {
    let mut s = format!(
        "# defib boot menu, build {build_id}\n\
         set default=0\n\
         set timeout={TIMEOUT}\n\
         set timeout_style=menu\n\
         serial --unit=0 --speed=115200\n\
         terminal_input console serial\n\
         terminal_output console serial\n\n"
    );
    for e in entries {
        s.push_str(&format!(
            "menuentry 'defib: {}' --hotkey={} --id {} {{\n\
             \techo 'Loading defib ({})...'\n\
             \tlinux /{KERNEL} {}\n\
             \tinitrd /{INITRD} /{PAYLOADS}\n\
             }}\n\n",
            e.title,
            hotkey(&e.id),
            e.id,
            e.id,
            e.cmdline
        ));
    }
    s.push_str(
        "menuentry 'Reboot' --id reboot {\n\treboot\n}\n\n\
         menuentry 'Power off' --id poweroff {\n\thalt\n}\n",
    );
    s
}

/// The syslinux menu modules (BIOS, from `syslinux-common`) the config
/// below needs beside it: `menu.c32` and the libraries it links against,
/// and the two COM32 modules behind the Reboot and Power off entries.
pub const SYSLINUX_MODULES: &[&str] = &[
    "menu.c32",
    "libutil.c32",
    "libcom32.c32",
    "reboot.c32",
    "poweroff.c32",
];

/// `syslinux.cfg` (USB, BIOS) and `isolinux.cfg` (ISO, BIOS): the same
/// entries and command lines as [`grub_cfg`], for syslinux 6's `menu.c32`.
/// Paths are absolute from the root of the volume syslinux booted from.
///
/// Syntax: syslinux `doc/syslinux.txt` (SERIAL, TIMEOUT in tenths of a
/// second, `INITRD a,b` for several initramfs segments) and `doc/menu.txt`
/// (`^` in a MENU LABEL marks the entry's hotkey).
pub fn syslinux_cfg(entries: &[BootEntry], build_id: &str) -> String {
    let default = entries.first().map(|e| e.id.as_str()).unwrap_or("auto");
    let mut s = format!(
        "# defib boot menu, build {build_id}\n\
         SERIAL 0 115200\n\
         UI menu.c32\n\
         PROMPT 0\n\
         TIMEOUT {}\n\
         DEFAULT {default}\n\
         MENU TITLE defib\n\n",
        TIMEOUT * 10
    );
    for e in entries {
        let key = hotkey(&e.id);
        let title = e.title.replace(&format!("[{key}]"), &format!("[^{key}]"));
        s.push_str(&format!(
            "LABEL {}\n\
             \tMENU LABEL defib: {title}\n\
             \tLINUX /{KERNEL}\n\
             \tINITRD /{INITRD},/{PAYLOADS}\n\
             \tAPPEND {}\n\n",
            e.id, e.cmdline
        ));
    }
    s.push_str(
        "LABEL reboot\n\tMENU LABEL Reboot\n\tCOM32 reboot.c32\n\n\
         LABEL poweroff\n\tMENU LABEL Power off\n\tCOM32 poweroff.c32\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_carry_mode_and_after() {
        let e = entries(After::Poweroff);
        assert_eq!(e.len(), 3);
        assert!(e[0]
            .cmdline
            .ends_with("defib.mode=auto defib.after=poweroff"));
        assert!(e[1].cmdline.contains("defib.mode=scan"));
        assert!(!entries(After::Reboot)[2].cmdline.contains("defib.after"));
    }

    #[test]
    fn grub_cfg_default_is_repair_with_both_consoles() {
        let cfg = grub_cfg(&entries(After::Reboot), "abc");
        assert!(cfg.contains("set default=0\nset timeout=5\n"));
        let first = cfg.find("menuentry").unwrap();
        assert!(cfg[first..]
            .starts_with("menuentry 'defib: Repair automatically [r]' --hotkey=r --id auto"));
        assert!(cfg.contains("--hotkey=s --id scan"));
        assert!(cfg.contains("terminal_output console serial"));
        assert!(cfg.contains("initrd /defib/initrd.img /defib/payloads.img"));
    }

    #[test]
    fn syslinux_cfg_matches_the_grub_menu() {
        let e = entries(After::Poweroff);
        let cfg = syslinux_cfg(&e, "abc");
        assert!(cfg.contains("SERIAL 0 115200\nUI menu.c32\n"));
        assert!(cfg.contains("TIMEOUT 50\nDEFAULT auto\n"));
        let first = cfg.find("LABEL ").unwrap();
        assert!(cfg[first..].starts_with("LABEL auto\n"));
        for (entry, key) in e.iter().zip(['r', 's', 'h']) {
            assert!(cfg.contains(&format!("\tAPPEND {}\n", entry.cmdline)));
            let label = format!("LABEL {}\n\tMENU LABEL defib: ", entry.id);
            let at = cfg.find(&label).unwrap() + label.len();
            let line = cfg[at..].lines().next().unwrap();
            assert!(line.ends_with(&format!("[^{key}]")), "{line}");
        }
        assert_eq!(
            cfg.matches("\tINITRD /defib/initrd.img,/defib/payloads.img\n")
                .count(),
            3
        );
        assert!(cfg.contains("COM32 reboot.c32"));
    }
}
