//! The seam where the repair engine plugs in: from what the probe found to
//! a verdict, a reason and the technician's next step.
//!
//! Today there is no engine: any NTFS or BitLocker volume means a person
//! must look. The engine will replace the body of [`evaluate`], not its
//! signature's role.

use crate::cmdline::Mode;
use crate::probe::Probe;
use crate::report::Verdict;

/// What a run concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// One line: why this verdict.
    pub reason: String,
    /// One line: what the technician does next.
    pub next_step: String,
    /// Extra lines for the report's `messages`.
    pub messages: Vec<String>,
}

/// Decides the verdict for this machine.
pub fn evaluate(probe: &Probe, _mode: Mode) -> Outcome {
    let windows: Vec<String> = probe
        .windows_candidates()
        .filter(|v| !v.boot_medium)
        .map(|v| format!("{} ({})", v.device, v.fs.as_str()))
        .collect();
    if windows.is_empty() {
        return Outcome {
            verdict: Verdict::NoWindowsFound,
            reason: "no NTFS or BitLocker volume on any disk".into(),
            next_step: "check the disk is connected and visible in firmware setup (RAID/VMD mode may hide it)".into(),
            messages: Vec::new(),
        };
    }
    Outcome {
        verdict: Verdict::NeedsAttention,
        reason: format!(
            "Windows volume(s) found: {}; this build has no repair engine yet",
            windows.join(", ")
        ),
        next_step: "repair by hand, or boot a defib build with the repair engine".into(),
        messages: vec!["repair engine not in this build: nothing was changed".into()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{Bus, FsKind, Volume};

    fn vol(name: &str, fs: FsKind, boot_medium: bool) -> Volume {
        Volume {
            device: name.into(),
            size_bytes: 0,
            fs,
            bus: Bus::Ata,
            removable: false,
            partition: true,
            boot_medium,
        }
    }

    #[test]
    fn no_windows_without_ntfs_or_bitlocker() {
        let p = Probe {
            volumes: vec![
                vol("sda1", FsKind::Fat, false),
                vol("sdb1", FsKind::Fat, true),
            ],
            messages: vec![],
        };
        assert_eq!(evaluate(&p, Mode::Auto).verdict, Verdict::NoWindowsFound);
    }

    #[test]
    fn windows_needs_attention_for_now() {
        let p = Probe {
            volumes: vec![
                vol("sda3", FsKind::Ntfs, false),
                vol("sda4", FsKind::Bitlocker, false),
            ],
            messages: vec![],
        };
        let o = evaluate(&p, Mode::Scan);
        assert_eq!(o.verdict, Verdict::NeedsAttention);
        assert!(o.reason.contains("sda3 (ntfs), sda4 (bitlocker)"));
    }

    #[test]
    fn ntfs_on_the_boot_medium_is_not_windows() {
        let p = Probe {
            volumes: vec![vol("sdb", FsKind::Ntfs, true)],
            messages: vec![],
        };
        assert_eq!(evaluate(&p, Mode::Auto).verdict, Verdict::NoWindowsFound);
    }
}
