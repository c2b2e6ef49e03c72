//! The machine's verdict: from what the probe saw and what each Windows
//! volume's repair concluded, one verdict, one reason and the technician's
//! next step.
//!
//! Not the per-volume logic (that is `repair::summarise`); this only picks
//! which volume's news the screen leads with: worst first.

use crate::probe::Probe;
use crate::report::Verdict;
use crate::report::WindowsReport;

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
pub fn decide(probe: &Probe, windows: &[WindowsReport]) -> Outcome {
    if windows.is_empty() {
        let ntfs = probe.windows_candidates().any(|v| !v.boot_medium);
        return Outcome {
            verdict: Verdict::NoWindowsFound,
            reason: if ntfs {
                "NTFS volumes found, none with a Windows installation".into()
            } else {
                "no NTFS or BitLocker volume on any disk".into()
            },
            next_step: "check the disk is connected and visible in firmware setup (RAID/VMD mode may hide it)"
                .into(),
            messages: Vec::new(),
        };
    }
    // Needs-attention (or failed) first: a person must act; then repaired.
    let lead = windows
        .iter()
        .find(|w| matches!(w.verdict, Verdict::NeedsAttention | Verdict::Failed))
        .or_else(|| windows.iter().find(|w| w.verdict == Verdict::Repaired))
        .unwrap_or(&windows[0]);
    // Every other volume that needs a person is named too: with several
    // locked BitLocker disks, each one's key IDs are in the verdict.
    let mut reason = format!("{}: {}", lead.volume, lead.reason);
    for w in windows.iter().filter(|w| {
        !std::ptr::eq(*w, lead) && matches!(w.verdict, Verdict::NeedsAttention | Verdict::Failed)
    }) {
        reason.push_str(&format!("; and {}: {}", w.volume, w.reason));
    }
    Outcome {
        verdict: lead.verdict,
        reason,
        next_step: lead.next_step.clone(),
        messages: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{Bus, FsKind, Volume};
    use crate::report::VolumeState;

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

    fn win(volume: &str, verdict: Verdict) -> WindowsReport {
        WindowsReport {
            volume: volume.into(),
            identity: None,
            state: VolumeState::default(),
            playbooks: Vec::new(),
            run_dir: None,
            verdict,
            reason: format!("{verdict:?}"),
            next_step: "next".into(),
            boot_health: None,
            mount: None,
        }
    }

    #[test]
    fn no_windows_without_ntfs_or_bitlocker() {
        let p = Probe {
            volumes: vec![
                vol("sda1", FsKind::Fat, false),
                vol("sdb", FsKind::Ntfs, true),
            ],
            messages: vec![],
        };
        let o = decide(&p, &[]);
        assert_eq!(o.verdict, Verdict::NoWindowsFound);
        assert!(
            o.reason.starts_with("no NTFS"),
            "NTFS on the stick itself is not Windows: {}",
            o.reason
        );
    }

    #[test]
    fn ntfs_without_windows_is_said_so() {
        let p = Probe {
            volumes: vec![vol("sda2", FsKind::Ntfs, false)],
            messages: vec![],
        };
        let o = decide(&p, &[]);
        assert_eq!(o.verdict, Verdict::NoWindowsFound);
        assert!(o.reason.contains("none with a Windows installation"));
    }

    #[test]
    fn the_worst_news_leads() {
        let p = Probe::default();
        let o = decide(
            &p,
            &[
                win("sda2", Verdict::Repaired),
                win("sdb3", Verdict::NeedsAttention),
            ],
        );
        assert_eq!(o.verdict, Verdict::NeedsAttention);
        assert!(o.reason.starts_with("sdb3: "));
        // Two volumes needing a person: both named, the repaired one not.
        let o = decide(
            &p,
            &[
                win("vda", Verdict::Repaired),
                win("vdb", Verdict::NeedsAttention),
                win("vdc", Verdict::NeedsAttention),
            ],
        );
        assert_eq!(o.reason, "vdb: NeedsAttention; and vdc: NeedsAttention");
        let o = decide(
            &p,
            &[win("sda2", Verdict::Clean), win("sdb3", Verdict::Repaired)],
        );
        assert_eq!(o.verdict, Verdict::Repaired);
        let o = decide(&p, &[win("sda2", Verdict::Clean)]);
        assert_eq!(o.verdict, Verdict::Clean);
    }
}
