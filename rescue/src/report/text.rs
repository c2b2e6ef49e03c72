//! The report for people: `report.txt` on the victim and the stick, and
//! the lines the rescue prints on the console as it goes. Rendering only;
//! the schema is `report`'s, the writing `report::write`'s.

use super::{Report, WindowsReport};
use crate::probe::Probe;

/// The `report.txt` a person reads on the victim or the stick.
pub fn render_text(r: &Report) -> String {
    let mut s = format!(
        "defib {} report, run {}\nstarted {}  finished {}\nmachine: {} {} serial {} uuid {}\nboot: {} secure boot {} mode {} medium {}\n\nVERDICT: {}\n",
        r.defib_version,
        r.run_id,
        r.started,
        r.finished,
        r.machine.sys_vendor.as_deref().unwrap_or("-"),
        r.machine.product_name.as_deref().unwrap_or("-"),
        r.machine.product_serial.as_deref().unwrap_or("-"),
        r.machine.product_uuid.as_deref().unwrap_or("-"),
        r.boot.firmware.as_str(),
        if r.boot.secure_boot { "on" } else { "off" },
        r.boot.mode.as_str(),
        r.boot.medium.as_str(),
        r.verdict.as_str().to_uppercase(),
    );
    for w in &r.windows {
        s.push_str(&format!("\n== {} ==\n", w.volume));
        if let Some(i) = &w.identity {
            s.push_str(&format!(
                "Windows: {} (version {} build {}{}{}) {} computer {}\n",
                i.product_name.as_deref().unwrap_or("unknown"),
                i.version.as_deref().unwrap_or("?"),
                i.build.map(|b| b.to_string()).unwrap_or_else(|| "?".into()),
                i.ubr.map(|u| format!(".{u}")).unwrap_or_default(),
                i.service_pack
                    .as_deref()
                    .map(|s| format!(" {s}"))
                    .unwrap_or_default(),
                i.arch.as_deref().unwrap_or("?"),
                i.computer_name.as_deref().unwrap_or("?"),
            ));
            for n in &i.notes {
                s.push_str(&format!("  note: {n}\n"));
            }
        }
        s.push_str(&format!(
            "state: dirty {} hibernation {} written {}\n",
            w.state
                .dirty
                .map(|d| d.to_string())
                .unwrap_or_else(|| "unknown".into()),
            if w.state.hibernation.is_empty() {
                "-"
            } else {
                &w.state.hibernation
            },
            w.state.written
        ));
        if let Some(b) = &w.state.bitlocker {
            s.push_str(&format!(
                "BitLocker: {} protectors {}\n",
                b.encryption_method.as_deref().unwrap_or("?"),
                b.key_protectors.join(", ")
            ));
        }
        if let Some(h) = &w.boot_health {
            s.push_str(&boot_health_text(h));
        }
        s.push_str(&format!(
            "verdict: {} - {}\nnext: {}\n",
            w.verdict.as_str(),
            w.reason,
            w.next_step
        ));
        for p in &w.playbooks {
            s.push_str(&format!(
                "  playbook {} [{:?}]: {}\n",
                p.id, p.status, p.reason
            ));
            for c in &p.conditions {
                s.push_str(&format!(
                    "    when {} ({}): {} - {}\n",
                    c.id,
                    c.kind,
                    if c.held { "holds" } else { "no" },
                    c.detail
                ));
            }
            for a in &p.actions {
                s.push_str(&format!(
                    "    {} {} [{:?}] {}{}{}\n",
                    a.kind,
                    a.path,
                    a.status,
                    a.detail,
                    a.sha256_before
                        .as_deref()
                        .map(|h| format!(" before {h}"))
                        .unwrap_or_default(),
                    a.sha256_after
                        .as_deref()
                        .map(|h| format!(" after {h}"))
                        .unwrap_or_default(),
                ));
            }
        }
    }
    if !r.messages.is_empty() {
        s.push_str("\nmessages:\n");
        for m in &r.messages {
            s.push_str(&format!("  {m}\n"));
        }
    }
    s
}

/// The console lines for one Windows volume: who it is, each playbook with
/// its actions, and the volume's verdict.
pub fn screen_lines(dev: &str, r: &WindowsReport) -> Vec<String> {
    let mut out = Vec::new();
    let who = r.identity.as_ref().map(|i| {
        format!(
            "{} build {} {} ({})",
            i.product_name.as_deref().unwrap_or("Windows"),
            i.build.map(|b| b.to_string()).unwrap_or_else(|| "?".into()),
            i.arch.as_deref().unwrap_or("?"),
            i.computer_name.as_deref().unwrap_or("no name")
        )
    });
    out.push(format!(
        "/dev/{dev}: {}",
        who.unwrap_or_else(|| "Windows volume".into())
    ));
    for p in &r.playbooks {
        out.push(format!("  {}: {:?} - {}", p.id, p.status, p.reason));
        for a in &p.actions {
            out.push(format!(
                "    {} {}: {:?} {}",
                a.kind, a.path, a.status, a.detail
            ));
        }
    }
    if let Some(h) = &r.boot_health {
        for f in &h.findings {
            out.push(format!("  boot: {} -> {}", f.what, f.next));
        }
    }
    out.push(format!("  => {}: {}", r.verdict.as_str(), r.reason));
    if let Some(e) = io_error(r) {
        out.push(format!(
            "/dev/{dev}: THE DISK RETURNED I/O ERRORS ({e}); it may be failing: copy the data off and check it (SMART, cabling) before another repair"
        ));
    }
    out
}

/// The `boot_health` section of `report.txt`.
fn boot_health_text(h: &crate::boothealth::BootHealth) -> String {
    let b = &h.bcd;
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let flag = |v: Option<bool>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
    let mut s = format!(
        "boot health:\n  BCD: {}{}{}\n",
        b.status,
        b.store
            .as_deref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default(),
        if b.dirty {
            ", dirty or logs hold data"
        } else {
            ""
        },
    );
    if b.status == "read" {
        s.push_str(&format!(
            "  default entry {} {:?}: path {} (exists {}) safeboot {} bootstatuspolicy {} recoveryenabled {}\n",
            opt(&b.default_entry),
            b.description.as_deref().unwrap_or(""),
            opt(&b.path),
            flag(b.path_exists),
            b.safeboot.as_deref().unwrap_or("not set"),
            opt(&b.bootstatuspolicy),
            flag(b.recoveryenabled),
        ));
    }
    if let Some(e) = &b.error {
        s.push_str(&format!("  BCD error: {e}\n"));
    }
    s.push_str(&format!(
        "  pending: WinSxS\\pending.xml {} PendingFileRenameOperations {}{}\n  power: hiberfil.sys {} HiberbootEnabled {}\n",
        h.pending.pending_xml,
        h.pending
            .file_rename_operations
            .map(|n| n.to_string())
            .unwrap_or_else(|| "-".into()),
        h.pending
            .error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default(),
        if h.power.hiberfil.is_empty() { "-" } else { &h.power.hiberfil },
        flag(h.power.hiberboot_enabled),
    ));
    for f in &h.findings {
        s.push_str(&format!("  finding: {} -> {}\n", f.what, f.next));
    }
    s
}

/// The first error text in a volume's results that is the kernel's
/// `EIO` as Rust spells it ("Input/output error (os error 5)"): the
/// medium failed, which no playbook can fix and the technician must hear
/// about apart from the playbook's reason.
pub fn io_error(r: &WindowsReport) -> Option<String> {
    const EIO: &str = "Input/output error";
    let texts = std::iter::once(r.reason.as_str()).chain(r.playbooks.iter().flat_map(|p| {
        std::iter::once(p.reason.as_str())
            .chain(p.actions.iter().map(|a| a.detail.as_str()))
            .chain(p.conditions.iter().map(|c| c.detail.as_str()))
    }));
    for t in texts {
        if let Some(at) = t.find(EIO) {
            // The clause that names what failed: from the separator before
            // the error to the error's end, parentheses closed.
            let start = ["; ", ", ", "tried: ", "failed: "]
                .iter()
                .filter_map(|sep| t[..at].rfind(sep).map(|i| i + sep.len()))
                .max()
                .unwrap_or(0);
            let mut end = at + EIO.len();
            if t[end..].starts_with(" (os error 5)") {
                end += " (os error 5)".len();
            }
            let mut clause = t[start..end].trim().to_string();
            let open = clause.matches('(').count();
            let close = clause.matches(')').count();
            clause.push_str(&")".repeat(open.saturating_sub(close)));
            return Some(clause);
        }
    }
    None
}

/// One line per volume for the screen.
pub fn volume_lines(p: &Probe) -> Vec<String> {
    if p.volumes.is_empty() {
        return vec!["volumes: none".into()];
    }
    p.volumes
        .iter()
        .map(|v| {
            format!(
                "volume {:<12} {:>10} {:<9} {:<7}{}{}",
                v.device,
                human_size(v.size_bytes),
                v.fs.as_str(),
                v.bus.as_str(),
                if v.removable { " removable" } else { "" },
                if v.boot_medium { " defib-medium" } else { "" },
            )
        })
        .collect()
}

/// Sizes in binary units with one decimal: `476.9 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_gets_its_own_screen_line_naming_the_device() {
        let mut r = WindowsReport {
            volume: "vda1".into(),
            identity: None,
            state: Default::default(),
            playbooks: Vec::new(),
            run_dir: None,
            verdict: crate::report::Verdict::NeedsAttention,
            reason: "mcafee-dat-5958: no good copy of svchost.exe (tried: WINDOWS\\system32\\dllcache\\svchost.exe: unreadable (Input/output error (os error 5)), store: absent)".into(),
            next_step: String::new(),
            mount: None,
            boot_health: None,
        };
        let lines = screen_lines("vda1", &r);
        assert_eq!(
            lines.last().unwrap(),
            "/dev/vda1: THE DISK RETURNED I/O ERRORS (WINDOWS\\system32\\dllcache\\svchost.exe: unreadable (Input/output error (os error 5))); it may be failing: copy the data off and check it (SMART, cabling) before another repair"
        );
        r.reason = "mcafee-dat-5958: no good copy of svchost.exe".into();
        assert!(!screen_lines("vda1", &r)
            .iter()
            .any(|l| l.contains("I/O ERRORS")));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1024 * 1024), "1.0 MiB");
        assert_eq!(human_size(512_110_190_592), "476.9 GiB");
    }
}
