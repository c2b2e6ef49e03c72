//! Kernel module loading from the builder's ordered list,
//! `/lib/modules/<kver>/defib.load`.
//!
//! This is not modprobe: there is no dependency resolution, alias matching
//! or parameter handling here. The builder already wrote the closure in load
//! order; we hand each `.ko.xz` to the kernel, which decompresses it itself
//! (MODULE_INIT_COMPRESSED_FILE) and checks its signature under lockdown.

use crate::layout::MODULE_LIST;
use crate::report::ModuleFailure;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `finit_module` flag: the file is compressed and the kernel should
/// decompress it (include/uapi/linux/module.h, Linux 6.4+).
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

/// One line of `defib.load`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadEntry {
    /// Path relative to the modules directory.
    pub path: String,
    /// Paths of the modules it depends on directly (listed earlier).
    pub deps: Vec<String>,
}

/// Parses `defib.load`: per line a module path relative to the modules
/// directory, then the paths of its direct dependencies, separated by
/// spaces; blank lines and `#` comments are skipped. Paths that try to
/// leave the directory are dropped (the list is input like any other).
pub fn parse_load_list(text: &str) -> Vec<LoadEntry> {
    let safe = |p: &&str| !p.starts_with('/') && !p.split('/').any(|c| c == "..");
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let path = words.next().filter(safe)?;
            Some(LoadEntry {
                path: path.to_string(),
                deps: words.filter(safe).map(str::to_string).collect(),
            })
        })
        .collect()
}

/// What loading did.
#[derive(Debug, Clone, Default)]
pub struct LoadSummary {
    /// Loaded now, or already present (EEXIST).
    pub loaded: u32,
    pub failed: Vec<ModuleFailure>,
    /// Modules whose hardware is absent (ENODEV: no AES-NI, not on
    /// Hyper-V or Xen, …) and those left out because one they need is.
    pub not_applicable: Vec<String>,
    pub elapsed: Duration,
}

impl LoadSummary {
    /// The one-line summary for the console.
    pub fn line(&self) -> String {
        format!(
            "modules: {} loaded, {} not for this hardware, {} failed, {:.1} s",
            self.loaded,
            self.not_applicable.len(),
            self.failed.len(),
            self.elapsed.as_secs_f64()
        )
    }
}

/// `<root>/lib/modules/<kver>`.
pub fn modules_dir(root: &Path, kver: &str) -> PathBuf {
    root.join("lib/modules").join(kver)
}

/// Loads every module in `defib.load` with `load`, in order. A failure is
/// recorded and the next module tried: a missing NIC driver must not stop a
/// disk repair. `log` receives one line per failure.
pub fn load_all(
    dir: &Path,
    load: &mut dyn FnMut(&Path) -> std::io::Result<()>,
    log: &mut dyn FnMut(&str),
) -> std::io::Result<LoadSummary> {
    let start = Instant::now();
    let list = std::fs::read_to_string(dir.join(MODULE_LIST))?;
    let mut sum = LoadSummary::default();
    let mut unavailable = std::collections::BTreeSet::new();
    for LoadEntry { path: rel, deps } in parse_load_list(&list) {
        if let Some(dep) = deps.iter().find(|d| unavailable.contains(*d)) {
            // Loading it would only fail on unknown symbols.
            if sum.not_applicable.contains(dep) {
                sum.not_applicable.push(rel.clone());
            } else {
                log(&format!(
                    "module {rel}: skipped, it needs {dep}, which failed"
                ));
                sum.failed.push(ModuleFailure {
                    module: rel.clone(),
                    error: format!("skipped: needs {dep}, which failed"),
                });
            }
            unavailable.insert(rel);
            continue;
        }
        match load(&dir.join(&rel)) {
            Ok(()) => sum.loaded += 1,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => sum.loaded += 1,
            // The module's init found nothing to drive: not a fault.
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                sum.not_applicable.push(rel.clone());
                unavailable.insert(rel);
            }
            Err(e) => {
                unavailable.insert(rel.clone());
                log(&format!("module {rel}: {e}"));
                sum.failed.push(ModuleFailure {
                    module: rel,
                    error: e.to_string(),
                });
            }
        }
    }
    sum.elapsed = start.elapsed();
    Ok(sum)
}

/// Hands one module file to the kernel with `finit_module(2)`.
pub fn finit_module(path: &Path) -> std::io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: the fd is open for the whole call and the parameter string is
    // a NUL-terminated literal; finit_module reads both and keeps neither.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            f.as_raw_fd(),
            c"".as_ptr(),
            MODULE_INIT_COMPRESSED_FILE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_with_comments_and_blanks() {
        let text = "# storage first\nkernel/drivers/ata/libata.ko.xz\n\n  kernel/drivers/ata/ahci.ko.xz  # AHCI\n#x\n";
        let got: Vec<_> = parse_load_list(text).into_iter().map(|e| e.path).collect();
        assert_eq!(
            got,
            [
                "kernel/drivers/ata/libata.ko.xz",
                "kernel/drivers/ata/ahci.ko.xz"
            ]
        );
    }

    #[test]
    fn drops_paths_that_escape() {
        assert!(parse_load_list("/etc/passwd\n../x.ko\nkernel/../../y.ko\n").is_empty());
    }

    #[test]
    fn failures_are_recorded_and_loading_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MODULE_LIST), "a.ko.xz\nb.ko.xz\nc.ko.xz\n").unwrap();
        let mut seen = Vec::new();
        let mut load = |p: &Path| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            seen.push(name.clone());
            match name.as_str() {
                "a.ko.xz" => Err(std::io::Error::from_raw_os_error(libc::EEXIST)),
                "b.ko.xz" => Err(std::io::Error::from_raw_os_error(libc::EKEYREJECTED)),
                _ => Ok(()),
            }
        };
        let mut logged = Vec::new();
        let sum = load_all(dir.path(), &mut load, &mut |l| logged.push(l.to_string())).unwrap();
        assert_eq!(seen, ["a.ko.xz", "b.ko.xz", "c.ko.xz"]);
        assert_eq!(sum.loaded, 2);
        assert_eq!(sum.failed.len(), 1);
        assert_eq!(sum.failed[0].module, "b.ko.xz");
        assert_eq!(logged.len(), 1);
        assert!(sum
            .line()
            .starts_with("modules: 2 loaded, 0 not for this hardware, 1 failed, "));
    }

    #[test]
    fn absent_hardware_is_not_a_failure_and_dependants_follow() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(MODULE_LIST),
            "hv_vmbus.ko.xz\nhv_storvsc.ko.xz hv_vmbus.ko.xz\nbad.ko.xz\nuser.ko.xz bad.ko.xz\nok.ko.xz\n",
        )
        .unwrap();
        let mut tried = Vec::new();
        let mut load = |p: &Path| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            tried.push(name.clone());
            match name.as_str() {
                "hv_vmbus.ko.xz" => Err(std::io::Error::from_raw_os_error(libc::ENODEV)),
                "bad.ko.xz" => Err(std::io::Error::from_raw_os_error(libc::EKEYREJECTED)),
                _ => Ok(()),
            }
        };
        let sum = load_all(dir.path(), &mut load, &mut |_| {}).unwrap();
        assert_eq!(tried, ["hv_vmbus.ko.xz", "bad.ko.xz", "ok.ko.xz"]);
        assert_eq!(sum.not_applicable, ["hv_vmbus.ko.xz", "hv_storvsc.ko.xz"]);
        let failed: Vec<_> = sum.failed.iter().map(|f| f.module.as_str()).collect();
        assert_eq!(failed, ["bad.ko.xz", "user.ko.xz"]);
        assert_eq!(sum.loaded, 1);
    }

    #[test]
    fn missing_list_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_all(dir.path(), &mut |_| Ok(()), &mut |_| {}).is_err());
    }
}
