//! The contract between the builder and the rescue: every name one side
//! writes and the other reads — the boot medium's label, where the manifest,
//! the build info, the module list, the payloads and the reports live, and
//! the kernel command line's keys. The builder uses these constants (and the
//! types in [`crate::bootargs`]) to write; the rescue uses them to find.
//!
//! Only names live here, no behaviour; formats are in `buildinfo`, `report`
//! and `bootargs`.

/// FAT volume label and GPT partition name of the USB image, and the ISO
/// 9660 volume id: what the rescue looks for to find its medium.
pub const LABEL: &str = "DEFIB";

/// `\defib\manifest.json` on the medium: what went into the image.
pub const MANIFEST: &str = "defib/manifest.json";

/// `/etc/defib/build.json` in the initramfs: which build this is.
pub const BUILD_INFO: &str = "etc/defib/build.json";

/// `defib.load` beside the modules in `/lib/modules/<kver>/`: the modules
/// to load, one relative path a line, in load order.
pub const MODULE_LIST: &str = "defib.load";

/// `defib.alias` beside it: each module's device aliases (`alias <glob>
/// <path>`, from its `.modinfo`) and the modules every machine gets
/// (`always <path>`); the rescue loads by the devices it finds.
pub const MODULE_ALIASES: &str = "defib.alias";

/// `/payloads` in the initramfs (the second segment): playbooks and store.
pub const PAYLOADS_DIR: &str = "payloads";

/// `\reports\` on the medium: one report per machine and run.
pub const REPORTS_DIR: &str = "reports";

/// `\defib\store\` on the USB medium and the ISO: the known-good
/// store's `index.json` and `objects\<sha256>`, read on demand, never
/// loaded into RAM as a whole (docs/store-format.md).
pub const MEDIUM_STORE_DIR: &str = "defib/store";

/// `store/` in the PXE tree: the same store, served under the HTTP root.
pub const PXE_STORE_DIR: &str = "store";

/// `\keys\` on the medium: BitLocker key files the rescue reads (CSV
/// exports, `BitLocker Recovery Key <GUID>.TXT`, `.BEK` startup keys).
pub const KEYS_DIR: &str = "keys";

/// The kernel command line keys the rescue reads.
pub mod keys {
    /// `defib.mode=auto|scan|shell` ([`crate::bootargs::Mode`]).
    pub const MODE: &str = "defib.mode";
    /// `defib.after=reboot|poweroff` ([`crate::bootargs::After`]).
    pub const AFTER: &str = "defib.after";
    /// `defib.wait=SECONDS`: the bound on waiting for devices.
    pub const WAIT: &str = "defib.wait";
    /// `defib.medium=usb|pxe|cdrom` ([`crate::bootargs::MediumHint`]).
    pub const MEDIUM: &str = "defib.medium";
    /// `defib.report=http://IP[:PORT]/folder/`: where to PUT the report.
    pub const REPORT: &str = "defib.report";
    /// `defib.store=http://IP[:PORT]/path/`: where to GET store objects
    /// (`<path>objects/<sha256>`) when the image has no medium (PXE).
    pub const STORE: &str = "defib.store";
    /// The kernel's `ip=` as iPXE or GRUB pass it.
    pub const IP: &str = "ip";
    /// `BOOTIF=01-<mac>`: the NIC the machine booted from (PXELINUX style).
    pub const BOOTIF: &str = "BOOTIF";
    /// `defib.fault=N`: abort at the N-th journal fault point, as a power
    /// cut would (tests of crash consistency; see `journal`).
    pub const FAULT: &str = "defib.fault";
    /// `defib.hash-unlocked=1`: record the SHA-256 of every BitLocker
    /// volume's mapped plain device in the report (proves an unlock
    /// end to end; costs one full read per volume).
    pub const HASH_UNLOCKED: &str = "defib.hash-unlocked";
    /// `defib.keywait=SECONDS`: how long the recovery-key prompt waits for
    /// a keystroke before it goes on without the volume (0: never asks).
    pub const KEYWAIT: &str = "defib.keywait";
    /// `defib.keys=http://IPv4[:PORT]/path/`: where to GET BitLocker keys
    /// for protectors no key on the stick opened (network boots).
    pub const KEYS_URL: &str = "defib.keys";
    /// `defib.tls=sha256:HEX`: the SHA-256 of the one certificate an
    /// `https://` report, store or keys URL may present.
    pub const TLS: &str = "defib.tls";
    /// `console=`: where the rescue prints.
    pub const CONSOLE: &str = "console";
}
