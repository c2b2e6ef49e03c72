//! The rescue as PID 1: a table of steps from mounting `/proc` to the
//! reboot, each one logged on the consoles.
//!
//! This module is the thin, kernel-facing frame. The decisions live in the
//! modules it calls (`cmdline`, `probe`, `medium`, `verdict`, `report`), which
//! are tested on plain directories; this file is tested by booting the image.
//! PID 1 must never exit or panic into a kernel panic: every error path ends
//! in [`fatal`], which shows the error, waits, and reboots.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::bootargs::{After, BootArgs, MediumHint, Mode};
use crate::buildinfo::{read_build_info, BuildInfo};
use crate::firmware;
use crate::layout;
use crate::probe::{self, Probe};
use crate::report::{self, MediumKind, Modules, Report, Verdict};
use crate::verdict::{self, Outcome};
use crate::VERSION;
use console::Console;
use medium::{Found, KernelMounter, Mounter, WaitEnd};

pub mod console;
pub mod dmi;
pub mod hotplug;
pub mod keyprompt;
pub mod kmod;
pub mod medium;
pub mod mounts;
pub mod net;
pub mod netkeys;
pub mod objects;
pub mod shell;

/// The longest wait for a uevent before looking at the devices again
/// (a disk may appear without a module load: NVMe namespaces, USB sticks).
const TICK: Duration = Duration::from_millis(20);
/// How long loads may still run once the wait for devices is over.
const MODULE_LIMIT: Duration = Duration::from_secs(60);
/// Countdown before a reboot, so the technician can read the verdict.
const REBOOT_COUNTDOWN: u32 = 10;
/// How long a fatal error stays on screen before the reboot.
const FATAL_PAUSE: Duration = Duration::from_secs(30);

/// The state of one run: the report, filled in step by step, and what the
/// steps hand each other that is not part of it.
pub struct Run {
    root: PathBuf,
    console: Console,
    start: Instant,
    args: BootArgs,
    build: Option<BuildInfo>,
    medium: Option<Found>,
    mounter: KernelMounter,
    probe: Probe,
    /// Module loading threads and the uevent socket, from `modules` on.
    loader: Option<kmod::Loader>,
    /// Every load has ended (or the bound ran out) and the report has the
    /// modules.
    modules_settled: bool,
    uevents: Option<hotplug::Socket>,
    outcome: Option<Outcome>,
    volumes: crate::volumes::KernelVolumes,
    /// Where the verdict line points: the medium's copy, else the victim's.
    report_path: Option<String>,
    report: Report,
}

/// One step of the table.
pub struct Step {
    pub name: &'static str,
    pub run: fn(&mut Run) -> Result<()>,
    /// An error here means PID 1 cannot go on (no /proc, /sys or /dev).
    pub fatal: bool,
}

/// The whole run, in order. Only the early mounts are fatal: everything
/// after them degrades (no modules, no medium) and still ends in a verdict.
pub const STEPS: &[Step] = &[
    Step {
        name: "mount",
        run: mount_early,
        fatal: true,
    },
    Step {
        name: "banner",
        run: banner,
        fatal: false,
    },
    Step {
        name: "modules",
        run: load_modules,
        fatal: false,
    },
    Step {
        name: "devices",
        run: wait_devices,
        fatal: false,
    },
    Step {
        name: "efivarfs",
        run: mount_late,
        fatal: false,
    },
    Step {
        name: "medium",
        run: find_medium,
        fatal: false,
    },
    Step {
        name: "probe",
        run: probe_volumes,
        fatal: false,
    },
    Step {
        name: "evaluate",
        run: decide,
        fatal: false,
    },
    Step {
        name: "report",
        run: write_report,
        fatal: false,
    },
    Step {
        name: "network",
        run: send_report,
        fatal: false,
    },
    Step {
        name: "verdict",
        run: show_verdict,
        fatal: false,
    },
    Step {
        name: "shell",
        run: shell_mode,
        fatal: false,
    },
];

impl Run {
    fn new(root: &Path) -> Run {
        let started = SystemTime::now();
        let run_id = crate::runid::run_id(started, crate::runid::random4());
        Run {
            root: root.to_path_buf(),
            console: Console::pending(),
            start: Instant::now(),
            args: BootArgs::default(),
            build: None,
            medium: None,
            mounter: KernelMounter::new(root),
            probe: Probe::default(),
            loader: None,
            modules_settled: false,
            uevents: None,
            outcome: None,
            volumes: crate::volumes::KernelVolumes::new(root),
            report_path: None,
            report: Report::begin(started, run_id, Mode::default()),
        }
    }

    fn say(&mut self, line: &str) {
        self.console.line(line);
    }

    /// A line for the screen that also goes into the report.
    fn note(&mut self, line: String) {
        self.console.line(&format!("warning: {line}"));
        self.report.messages.push(line);
    }

    fn medium_kind(&self) -> MediumKind {
        match (&self.medium, self.args.medium) {
            (_, Some(MediumHint::Pxe)) => MediumKind::Pxe,
            (Some(f), _) => medium::medium_kind(&f.dev.name, &f.dev.sysfs_path),
            (None, _) => MediumKind::None,
        }
    }
}

/// Entry point when running as PID 1. Never returns.
pub fn main() -> ! {
    std::panic::set_hook(Box::new(|info| {
        // A parser of victim data panicked inside a guard: the guard turns
        // it into an error about that file; rebooting here would beat it.
        if crate::guard::panic_is_contained() {
            return;
        }
        fatal(&format!("rescue panicked: {info}"))
    }));
    let mut run = Run::new(Path::new("/"));
    for step in STEPS {
        let t = Instant::now();
        if let Err(e) = (step.run)(&mut run) {
            if step.fatal {
                fatal(&format!("step {} failed: {e:#}", step.name));
            }
            run.note(format!("step {} failed: {e:#}", step.name));
        }
        let took = t.elapsed();
        run.report
            .boot
            .timings
            .push(report::StepTime::new(step.name, took));
        run.say(&format!(
            "-- {} done in {:.2} s",
            step.name,
            took.as_secs_f64()
        ));
    }
    finish(&mut run)
}

/// Shows a fatal error on every console, waits so a person can read or
/// photograph it, and reboots. Used by the panic hook too.
pub fn fatal(msg: &str) -> ! {
    console::emergency(&format!(
        "\n\x1b[1;31m==== DEFIB FAILED ====\x1b[0m\n{msg}\ndefib: verdict failed\n\
         defib: rebooting in {} s\n",
        FATAL_PAUSE.as_secs()
    ));
    std::thread::sleep(FATAL_PAUSE);
    console::emergency("defib: rebooting\n");
    reboot(After::Reboot)
}

/// Syncs and asks the kernel to restart or power off. If the kernel
/// refuses, PID 1 sleeps rather than exit (exit would panic the kernel).
fn reboot(after: After) -> ! {
    rustix::fs::sync();
    let cmd = match after {
        After::Reboot => rustix::system::RebootCommand::Restart,
        After::Poweroff => rustix::system::RebootCommand::PowerOff,
    };
    if let Err(e) = rustix::system::reboot(cmd) {
        console::emergency(&format!(
            "defib: reboot failed: {e}; power the machine off\n"
        ));
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn mount_early(run: &mut Run) -> Result<()> {
    for step in mounts::plan(&run.root, mounts::EARLY) {
        match mounts::apply(&run.root, &step) {
            Ok(()) => run.say(&format!("mounted {} on /{}", step.fstype, step.target)),
            Err(e) if step.required => return Err(e),
            Err(e) => run.note(format!("{e:#}")),
        }
    }
    Ok(())
}

fn banner(run: &mut Run) -> Result<()> {
    let cmdline_path = run.root.join("proc/cmdline");
    run.report.boot.cmdline = std::fs::read_to_string(&cmdline_path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    run.args = BootArgs::parse(&run.report.boot.cmdline);
    if let Some(pin) = run.args.tls_pin {
        net::tls::set_boot_pin(pin);
    }
    run.report.boot.mode = run.args.mode;
    // The banner is the first line the rescue prints; boot benchmarks time it.
    let failed = run.console.open(
        &run.args.consoles,
        &format!("defib rescue {VERSION} starting"),
    );
    for f in failed {
        run.note(f);
    }
    run.report.boot.kernel = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    run.report.boot.firmware = firmware::firmware(&run.root);
    run.report.machine = dmi::read_machine(&run.root);
    let (kernel, fw, a) = (
        run.report.boot.kernel.clone(),
        run.report.boot.firmware,
        run.args.clone(),
    );
    run.say(&format!("kernel: {kernel}"));
    run.say(&format!("firmware: {}", fw.as_str()));
    run.say(&format!(
        "mode: {} (after: {}, wait: {} s)",
        a.mode.as_str(),
        a.after.as_str(),
        a.wait.as_secs()
    ));
    for w in a.warnings {
        run.note(w);
    }
    if let Some(n) = a.fault {
        crate::journal::set_fault(n, crate::journal::FaultMode::Abort);
        run.note(format!(
            "fault injection armed: the run stops at journal point {n} (a test, not a repair)"
        ));
    }
    match read_build_info(&run.root) {
        Ok(b) => {
            run.say(&format!(
                "build: {} (defib {})",
                b.build_id, b.defib_version
            ));
            if b.kernel != kernel {
                run.note(format!(
                    "image built for kernel {} but running {kernel}",
                    b.kernel
                ));
            }
            run.report.build_id = Some(b.build_id.clone());
            run.build = Some(b);
        }
        Err(e) => run.note(format!("no build info: {e:#}")),
    }
    Ok(())
}

/// Starts the loaders and asks for the modules of every device in sysfs and
/// those every machine gets (the uevent socket is open first, so a device
/// that appears meanwhile is not missed); `devices` waits for them.
fn load_modules(run: &mut Run) -> Result<()> {
    let dir = kmod::modules_dir(&run.root, &run.report.boot.kernel);
    let table = match kmod::Table::read(&dir) {
        Ok(t) => t,
        Err(e) => {
            run.note(format!(
                "no modules loaded: reading {}: {e}",
                dir.join(layout::MODULE_ALIASES).display()
            ));
            return Ok(());
        }
    };
    match hotplug::Socket::open() {
        Ok(s) => run.uevents = Some(s),
        Err(e) => run.note(format!(
            "no uevents ({e}); devices that appear later are found by looking again"
        )),
    }
    // Loads wait on probes (an AHCI port's link, a USB reset) more than on
    // the CPU: more threads than CPUs keep one probe from holding up the rest.
    let threads = std::thread::available_parallelism().map_or(4, |n| (2 * n.get()).clamp(4, 8));
    let loader = kmod::Loader::start(
        &dir,
        table,
        threads,
        std::sync::Arc::new(kmod::finit_module),
    );
    // The devices' drivers first: their probes run while the rest loads.
    coldplug(&run.root, &loader);
    // A late mount that does not apply here (efivarfs without UEFI) needs
    // no module.
    let unneeded = mounts::unneeded_modules(&run.root);
    loader.want_always(|p| unneeded.contains(&kmod::module_name(p).as_str()));
    run.loader = Some(loader);
    // No wait here: the loads run on while `devices` waits for the
    // medium and the disks, which needs them idle before it ends.
    if let Some(l) = &run.loader {
        let carried = l.summary().carried;
        run.say(&format!(
            "modules: loading for this machine's devices ({carried} carried)"
        ));
    }
    Ok(())
}

/// Asks for the modules of every device in sysfs.
fn coldplug(root: &Path, loader: &kmod::Loader) -> usize {
    hotplug::modaliases(root)
        .iter()
        .map(|m| loader.want_for(m))
        .sum()
}

/// Waits up to `timeout` for uevents and asks for the modules of the new
/// devices. Returns whether the loaders were idle before (so every device
/// their loads made has been announced) and how many modules are new.
fn pump(run: &mut Run, timeout: Duration) -> (bool, usize) {
    let Some(loader) = &run.loader else {
        return (true, 0);
    };
    // Background loads (filesystems, ciphers) announce no devices.
    let idle = loader.devices_idle();
    let mut new = 0;
    match &run.uevents {
        Some(sock) => match sock.wait(timeout) {
            Ok(batch) => {
                for ev in &batch.events {
                    if let (Some(m), "add" | "bind" | "change") = (&ev.modalias, ev.action.as_str())
                    {
                        new += loader.want_for(m);
                    }
                }
                if batch.overflowed {
                    new += coldplug(&run.root, loader);
                }
            }
            Err(_) => new += coldplug(&run.root, loader),
        },
        None => {
            std::thread::sleep(timeout);
            new += coldplug(&run.root, loader);
        }
    }
    let lines = loader.take_log();
    for l in lines {
        run.say(&l);
    }
    (idle, new)
}

fn modules_to_report(run: &mut Run) {
    if let Some(l) = &run.loader {
        let sum = l.summary();
        run.report.modules = Modules {
            loaded: sum.loaded.len() as u32,
            carried: sum.carried as u32,
            names: module_names(&sum.loaded),
            failed: sum.failed,
            not_applicable: sum.not_applicable,
        };
    }
}

/// Module names from paths (`kernel/drivers/nvme/host/nvme.ko.xz` ->
/// `nvme`), sorted.
fn module_names(paths: &[String]) -> Vec<String> {
    let mut v: Vec<String> = paths.iter().map(|p| kmod::module_name(p)).collect();
    v.sort();
    v
}

fn mount_late(run: &mut Run) -> Result<()> {
    for step in mounts::plan(&run.root, mounts::AFTER_MODULES) {
        match mounts::apply(&run.root, &step) {
            Ok(()) => run.say(&format!("mounted {} on /{}", step.fstype, step.target)),
            Err(e) => run.note(format!("{e:#}")),
        }
    }
    let sb = firmware::secure_boot(&run.root, run.report.boot.firmware);
    run.report.boot.secure_boot = sb.on;
    run.say(&format!(
        "secure boot: {}",
        if sb.on { "on" } else { "off" }
    ));
    if let Some(n) = sb.note {
        run.note(n);
    }
    // The firmware's certificates, for the fleet's 2026 CA rotation.
    if let Some(inv) = crate::secureboot::read(&run.root) {
        run.say(&crate::secureboot::summary(&inv));
        for n in &inv.notes {
            run.note(format!("firmware: {n}"));
        }
        run.report.firmware = Some(crate::report::FirmwareFacts { secure_boot: inv });
    }
    Ok(())
}

/// Waits for the devices the run needs, driven by uevents: modules for
/// each new device are loaded as it appears, and the wait ends as soon as
/// the medium (unless PXE), a disk besides it, and a namespace on every
/// NVMe controller are there; `defib.wait` bounds it when something is
/// missing (a slow USB stick, a disk that never comes).
fn wait_devices(run: &mut Run) -> Result<()> {
    let want_medium = run.args.medium != Some(MediumHint::Pxe);
    let t = Instant::now();
    let mut timeout = Duration::ZERO;
    let (end, p) = loop {
        let (idle, new) = pump(run, timeout);
        timeout = TICK;
        let loaders_idle = idle && new == 0;
        // Only a settled machine is worth reading: sysfs and the disks'
        // first sectors.
        let p = if loaders_idle || t.elapsed() >= run.args.wait {
            medium::present_in(&run.root)
        } else {
            continue;
        };
        if let Some(end) =
            medium::wait_end(t.elapsed(), run.args.wait, &p, want_medium, loaders_idle)
        {
            break (end, (p, loaders_idle));
        }
    };
    let n = medium::block_names(&run.root).len();
    let secs = t.elapsed().as_secs_f64();
    match end {
        WaitEnd::Ready => run.say(&format!(
            "devices: ready in {secs:.1} s ({n} block devices)"
        )),
        WaitEnd::TimedOut => run.say(&format!(
            "devices: stopped waiting after {secs:.1} s ({n} block devices); missing: {}",
            medium::missing(&p.0, want_medium, p.1)
        )),
    }
    // The steps after this one mount filesystems, so their modules must
    // be in first (and the drivers, when the bound ran out with loads
    // running on a slow machine). Device mapper and the ciphers load on in
    // the background: only a BitLocker volume waits for them.
    if let Some(l) = &run.loader {
        if !l.wait_idle_but(|p, bg| bg && kmod::bitlocker_only(p), MODULE_LIMIT) {
            run.note(format!(
                "module loads still running after {} s more; going on without them",
                MODULE_LIMIT.as_secs()
            ));
        }
    }
    Ok(())
}

/// Waits for every module load to end (device mapper and the ciphers
/// included), once: before a BitLocker volume is unlocked and before the
/// report is written, which lists what was loaded.
fn settle_modules(run: &mut Run) {
    if run.modules_settled {
        return;
    }
    run.modules_settled = true;
    if let Some(l) = &run.loader {
        if !l.wait_idle(MODULE_LIMIT) {
            run.note(format!(
                "module loads still running after {} s; going on without them",
                MODULE_LIMIT.as_secs()
            ));
        }
    }
    modules_to_report(run);
    if let Some(l) = &run.loader {
        let sum = l.summary();
        let lines = l.take_log();
        for line in lines {
            run.say(&line);
        }
        run.say(&sum.line());
        run.say(&format!("modules: slowest {}", sum.slowest(5)));
    }
}

fn find_medium(run: &mut Run) -> Result<()> {
    let cands = medium::candidates(&run.root);
    let expected = run.build.as_ref().map(|b| b.build_id.clone());
    let mut lines = Vec::new();
    let found = medium::select(&cands, expected.as_deref(), &mut run.mounter, &mut |l| {
        lines.push(l.to_string())
    });
    for l in lines {
        run.note(l);
    }
    run.medium = found;
    run.report.boot.medium = run.medium_kind();
    match &run.medium {
        Some(f) => {
            let (name, build, matches) = (f.dev.name.clone(), f.build_id.clone(), f.matches_build);
            let kind = medium::medium_kind(&f.dev.name, &f.dev.sysfs_path);
            run.say(&format!(
                "medium: /dev/{name} ({}), build {build}",
                kind.as_str()
            ));
            if !matches && expected.is_some() {
                run.note(format!(
                    "medium /dev/{name} is from build {build}, not this image's"
                ));
            }
        }
        None if run.args.medium == Some(MediumHint::Pxe) => {
            run.say("medium: network boot, no stick; the report stays on screen only")
        }
        None => run.note("no defib boot medium found; the report will not be saved".into()),
    }
    Ok(())
}

fn probe_volumes(run: &mut Run) -> Result<()> {
    let medium = run.medium.as_ref().map(|f| f.dev.name.clone());
    run.probe = probe::probe(&run.root, medium.as_deref());
    for m in run.probe.messages.clone() {
        run.note(m);
    }
    for l in report::volume_lines(&run.probe) {
        run.say(&l);
    }
    run.report.volumes = run.probe.volumes.clone();
    Ok(())
}

fn decide(run: &mut Run) -> Result<()> {
    use crate::repair::{check_volume, Payloads};
    let payload_dir = run.root.join(layout::PAYLOADS_DIR);
    let mut payloads = match Payloads::load(&payload_dir) {
        Ok(p) => p,
        Err(e) => {
            run.report.verdict = Verdict::Failed;
            run.outcome = Some(Outcome {
                verdict: Verdict::Failed,
                reason: format!("the payloads in this image are unusable: {e:#}"),
                next_step: "rebuild the image with `defib build` and check its output".into(),
                messages: Vec::new(),
            });
            return Ok(());
        }
    };
    let fetched = store_locations(run, &mut payloads.store);
    let mode = run.args.mode.engine_mode();
    load_keys(run);
    run.volumes.hash_unlocked = run.args.hash_unlocked;
    let consoles = if run.args.consoles.is_empty() {
        vec![PathBuf::from("/dev/console")]
    } else {
        run.args.consoles.clone()
    };
    let (max_wf, avail) = crate::bitlocker::sealed::max_work_factor_here(&run.root);
    run.volumes.max_work_factor = max_wf;
    if !run.volumes.keys.sealed.is_empty() {
        run.say(&format!(
            "keys: {} MiB of memory available: sealed files up to work factor {max_wf} can be opened",
            avail.map_or("unknown".into(), |a| (a >> 20).to_string())
        ));
    }
    let tell_consoles = consoles.clone();
    run.volumes.tell = Some(Box::new(move |line| keyprompt::tell(&tell_consoles, line)));
    if run.args.keywait.is_zero() {
        // defib.keywait=0: an unattended boot, nobody is asked (neither a
        // recovery key nor a sealed file's passphrase).
        run.volumes.prompt = None;
        run.volumes.passphrase = None;
    } else {
        let mut passphrase = keyprompt::Prompt::new(consoles.clone(), run.args.keywait);
        run.volumes.passphrase = Some(Box::new(move |dev, files, notice| {
            passphrase.ask_passphrase(dev, files, notice)
        }));
        let mut prompt = keyprompt::Prompt::new(consoles, run.args.keywait);
        run.volumes.prompt = Some(Box::new(move |dev, meta| prompt.ask(dev, meta)));
    }
    if let Some(url) = run.args.keys_url.clone() {
        run.say(&format!(
            "keys: asking {} for BitLocker keys the stick does not have ({})",
            url.url_of(""),
            transport_words(url.tls, run.args.tls_pin.as_ref())
        ));
        run.volumes.fetch = Some(netkeys::for_boot(&run.root, url, &run.args));
    }
    run.say(&format!(
        "playbooks: {} ({}), store: {} entries",
        payloads.playbooks.len(),
        payloads
            .playbooks
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        payloads.store.index.entries.len()
    ));
    let candidates: Vec<(String, bool)> = run
        .probe
        .windows_candidates()
        .filter(|v| !v.boot_medium)
        .map(|v| (v.device.clone(), v.fs == crate::probe::FsKind::Bitlocker))
        .collect();
    for (dev, bitlocker) in candidates {
        if bitlocker {
            // Unlocking maps the volume with dm-crypt.
            settle_modules(run);
        }
        run.say(&format!("checking /dev/{dev}"));
        let reports = check_volume(
            &mut run.volumes,
            &dev,
            bitlocker,
            &payloads,
            mode,
            &run.report.run_id,
            None,
        );
        // Already on the consoles (told as they happened); the report
        // gets them too.
        run.report
            .messages
            .extend(std::mem::take(&mut run.volumes.notes));
        if reports.is_empty() {
            run.say(&format!(
                "/dev/{dev}: no Windows installation (data volume)"
            ));
        }
        for r in &reports {
            for l in report::screen_lines(&dev, r) {
                run.say(&l);
            }
        }
        for l in std::mem::take(&mut run.volumes.lines) {
            run.say(&l);
        }
        run.report.windows.extend(reports);
    }
    for l in std::mem::take(&mut *fetched.lock().unwrap_or_else(|p| p.into_inner())) {
        run.say(&l);
    }
    let mem = objects::memory_line(&run.root);
    run.say(&mem);
    let o = verdict::decide(&run.probe, &run.report.windows);
    run.report.messages.extend(o.messages.iter().cloned());
    run.report.verdict = o.verdict;
    run.outcome = Some(o);
    Ok(())
}

/// The store's object locations beyond the payloads (the medium, the PXE
/// server) and the medium's index when it has one; see `objects`.
fn store_locations(run: &mut Run, store: &mut crate::store::Store) -> objects::Lines {
    let lines = objects::Lines::default();
    let net = objects::NetPlan {
        root: run.root.clone(),
        ip: run.args.ip.clone(),
        bootif: run.args.bootif.clone(),
        wait: Duration::from_secs(15),
    };
    let medium = run.medium.as_ref().map(|m| m.path.clone());
    let url = run.args.store_url.clone();
    let (used, notes) =
        objects::attach(store, medium.as_deref(), url.as_deref(), net, lines.clone());
    for n in notes {
        run.note(n);
    }
    run.say(&format!(
        "store: index {} ({} entries{}), objects from {}",
        used.index,
        used.entries,
        used.index_sha256
            .as_deref()
            .map(|h| format!(", sha256 {}", &h[..12]))
            .unwrap_or_default(),
        used.locations.join(", ")
    ));
    run.report.store = Some(used);
    lines
}

/// BitLocker keys from the stick's `keys` folder (CSV exports, the .TXT
/// Windows saves, .BEK startup keys): loaded before any volume is looked
/// at. Only counts reach the screen and the report, never a key.
fn load_keys(run: &mut Run) {
    let Some(m) = &run.medium else {
        return;
    };
    let dir = m.path.join(layout::KEYS_DIR);
    if !dir.is_dir() {
        return;
    }
    match run.volumes.keys.add_dir(&dir) {
        Ok(n) => {
            run.say(&format!(
                "keys: {n} BitLocker key(s) from the stick's keys folder"
            ));
            let sealed = run.volumes.keys.sealed.len();
            if sealed > 0 {
                run.say(&format!(
                    "keys: {sealed} sealed key file(s), opened only if a locked volume needs them"
                ));
            }
        }
        Err(e) => run.note(format!("keys folder unreadable: {e:#}")),
    }
    for r in run.volumes.keys.rejected.clone() {
        run.note(format!("key file: {r}"));
    }
}

/// The report as it stands, stamped with the time it is written.
fn report_now(run: &Run) -> Report {
    let mut r = run.report.clone();
    r.finish(SystemTime::now());
    r
}

fn write_report(run: &mut Run) -> Result<()> {
    settle_modules(run);
    // First on each victim the run changed, then unmount them all.
    let rep = report_now(run);
    let mut victim_lines = Vec::new();
    let mut on_victim = None;
    for w in &run.report.windows {
        if let (Some(m), Some(_)) = (&w.mount, &w.run_dir) {
            match report::write_victim_reports(m, &rep.run_id, &rep) {
                Ok(Some(d)) => {
                    let dir = d
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    victim_lines.push(format!(
                        "report: saved on /dev/{} in \\defib\\{dir}",
                        w.volume
                    ));
                    on_victim
                        .get_or_insert(format!("/dev/{}:\\defib\\{dir}\\report.json", w.volume));
                }
                Ok(None) => {}
                Err(e) => victim_lines.push(format!(
                    "warning: report on /dev/{} not saved: {e:#}",
                    w.volume
                )),
            }
        }
    }
    for l in victim_lines {
        run.say(&l);
    }
    // Where the verdict line points when the medium gets no copy.
    run.report_path = on_victim;
    for e in run.volumes.umount_all() {
        run.note(e);
    }
    let Some(found) = run.medium.clone() else {
        run.say("report: no boot medium, not saved");
        return Ok(());
    };
    // The ISO (a CD, virtual media, or written to a stick) is read-only:
    // never try to write it.
    if medium::is_defib_iso(&run.root, &found.dev.name) {
        if let Err(e) = run.mounter.unmount() {
            run.note(format!("{e:#}"));
        }
        run.say(
            "report: the boot medium is a read-only ISO; the report is on the victim disk only",
        );
        return Ok(());
    }
    let rep = report_now(run);
    let dir = found.path.join(layout::REPORTS_DIR);
    let res = std::fs::create_dir_all(&dir)
        .map_err(anyhow::Error::from)
        .and_then(|_| crate::durable::write_atomic(&dir, &rep.file_name(), &rep.to_json()?));
    // Unmount whatever happened: a clean FAT is worth more than the report.
    let unmounted = run.mounter.unmount();
    if let Err(e) = unmounted {
        run.note(format!("{e:#}"));
    }
    let _ = res?;
    let on_medium = format!("/{}/{}", layout::REPORTS_DIR, rep.file_name());
    run.say(&format!("report: saved to {on_medium} on the medium"));
    run.report_path = Some(on_medium);
    Ok(())
}

/// Brings up the network and PUTs the report to `defib.report=`, when
/// given. Nothing here changes the verdict: a failure is a screen message.
fn send_report(run: &mut Run) -> Result<()> {
    use crate::report::Network;
    use net::{IpArg, ReportUrl};
    let Some(raw) = run.args.report_url.clone() else {
        if run.args.medium == Some(MediumHint::Pxe) {
            run.say("report: no defib.report= URL on the kernel command line; not sent");
        }
        return Ok(());
    };
    let on_victim = run
        .report
        .windows
        .iter()
        .any(|w| w.mount.is_some() && w.run_dir.is_some());
    let fallback = if on_victim {
        "it is on the victim disk"
    } else if run.report_path.is_some() {
        "it is on the boot medium"
    } else {
        "it is only on this screen"
    };
    let mut n = Network {
        report_url: Some(raw.clone()),
        ..Network::default()
    };
    let url = match ReportUrl::parse(&raw) {
        Ok(u) => u,
        Err(e) => {
            run.note(format!(
                "report: could not deliver to {raw}: {e}; {fallback}"
            ));
            n.error = Some(e.to_string());
            run.report.network = Some(n);
            return Ok(());
        }
    };
    n.transport = Some(if url.tls { "https" } else { "http" }.into());
    n.tls_pin = url
        .tls
        .then_some(run.args.tls_pin.as_ref())
        .flatten()
        .map(net::tls::pin_text);
    if url.tls && run.args.tls_pin.is_none() {
        let e = net::client::no_pin(url.addr);
        run.note(format!("report: not sent to {raw}: {e}; {fallback}"));
        n.error = Some(e);
        run.report.network = Some(n);
        return Ok(());
    }
    let ip = match net::parse_ip(run.args.ip.as_deref().unwrap_or("")) {
        Ok(ip) => ip,
        Err(e) => {
            run.note(format!("{e}; asking DHCP instead"));
            IpArg::Dhcp
        }
    };
    let mac = match run.args.bootif.as_deref() {
        Some(b) => {
            let m = net::parse_mac(b);
            if m.is_none() {
                run.note(format!("ignoring bad BOOTIF={b:?}"));
            }
            m
        }
        None => None,
    };
    let mut lines = Vec::new();
    let up = net::bring_up(
        &run.root,
        &ip,
        mac.as_deref(),
        Duration::from_secs(15),
        &mut |l| lines.push(l),
    );
    for l in lines {
        run.say(&l);
    }
    let up = match up {
        Ok(u) => u,
        Err(e) => {
            let target = url.url_of("");
            run.note(format!(
                "report: could not deliver to {target}: {e}; {fallback}"
            ));
            n.error = Some(e.to_string());
            run.report.network = Some(n);
            return Ok(());
        }
    };
    let address = format!(
        "{}/{}",
        up.config.address,
        net::prefix_len(up.config.netmask)
    );
    run.say(&format!(
        "network: {} {} {address} ({}{})",
        up.iface.name,
        up.iface.mac,
        up.how,
        up.config
            .gateway
            .map(|g| format!(", gateway {g}"))
            .unwrap_or_default()
    ));
    n.interface = Some(up.iface.name.clone());
    n.mac = Some(up.iface.mac.clone());
    n.address = Some(address);
    n.config = Some(up.how.to_string());
    // The copy the server receives is the delivered one.
    let name = report_now(run).file_name();
    let target = url.url_of(&name);
    n.report_url = Some(target.clone());
    n.delivered = true;
    run.report.network = Some(n.clone());
    let body = report_now(run).to_json()?;
    let d = net::deliver(&url, &name, &body, net::RETRY, &mut std::thread::sleep);
    if d.delivered {
        run.say(&format!(
            "report: delivered to {target} ({})",
            transport_words(url.tls, run.args.tls_pin.as_ref())
        ));
        if run.report_path.is_none() {
            run.report_path = Some(target);
        }
    } else {
        let e = d.error.unwrap_or_default();
        run.note(format!(
            "report: could not deliver to {target}: {e}; {fallback}"
        ));
        n.delivered = false;
        n.error = Some(e);
        run.report.network = Some(n);
    }
    Ok(())
}

/// How a request travels, for a screen line: the pin's first digits, or
/// that it is plain.
fn transport_words(tls: bool, pin: Option<&net::tls::Pin>) -> String {
    match (tls, pin) {
        (true, Some(p)) => format!("HTTPS, certificate {}", net::tls::pin_short(p)),
        (true, None) => "HTTPS without defib.tls=: nothing will be sent".into(),
        (false, _) => "plain HTTP: not encrypted".into(),
    }
}

fn show_verdict(run: &mut Run) -> Result<()> {
    let o = run.outcome.clone().unwrap_or_else(|| Outcome {
        verdict: Verdict::Failed,
        reason: "the rescue could not evaluate this machine".into(),
        next_step: "read the warnings above".into(),
        messages: Vec::new(),
    });
    let secs = run.start.elapsed().as_secs_f64();
    run.say(&format!("run time: {secs:.1} s"));
    run.console.verdict(o.verdict, &o.reason, &o.next_step);
    let path = run.report_path.clone().unwrap_or_else(|| "none".into());
    run.say(&format!("defib: report {path}"));
    Ok(())
}

fn shell_mode(run: &mut Run) -> Result<()> {
    if run.args.mode != Mode::Shell {
        return Ok(());
    }
    shell::install_busybox(&run.root)?;
    run.say("volumes found:");
    for l in report::volume_lines(&run.probe) {
        run.say(&format!("  {l}"));
    }
    if let Some(f) = &run.medium {
        let name = f.dev.name.clone();
        let fs = if medium::is_defib_iso(&run.root, &name) {
            "iso9660 -o ro"
        } else {
            "vfat"
        };
        run.say(&format!(
            "the defib medium is /dev/{name} (unmounted; mount -t {fs} /dev/{name} /mnt)"
        ));
    }
    let tty = shell::shell_tty(&run.args.consoles);
    run.say(&format!("shell on {}; type exit to finish", tty.display()));
    let status = shell::run_shell(&run.root, &tty);
    shell::reap_orphans();
    run.console.reopen();
    match status {
        Ok(s) => run.say(&format!("shell exited ({s})")),
        Err(e) => bail!(e),
    }
    Ok(())
}

fn finish(run: &mut Run) -> ! {
    match run.args.after {
        After::Reboot => {
            run.console
                .raw(&format!("defib: rebooting in {REBOOT_COUNTDOWN}"));
            for n in (1..REBOOT_COUNTDOWN).rev() {
                std::thread::sleep(Duration::from_secs(1));
                run.console.raw(&format!(" {n}"));
            }
            std::thread::sleep(Duration::from_secs(1));
            run.say("");
            run.say("defib: rebooting");
        }
        After::Poweroff => run.say("defib: powering off"),
    }
    reboot(run.args.after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_table_starts_with_fatal_mounts_only() {
        assert_eq!(STEPS[0].name, "mount");
        assert!(STEPS[0].fatal);
        assert!(STEPS[1..].iter().all(|s| !s.fatal));
        let pos = |n| STEPS.iter().position(|s| s.name == n).unwrap();
        // efivarfs is a module in Debian; Secure Boot is read after it.
        assert!(pos("modules") < pos("efivarfs"));
        assert!(pos("report") < pos("verdict"));
        // The report is on the victim before the network is tried.
        assert!(pos("report") < pos("network") && pos("network") < pos("verdict"));
    }
}
