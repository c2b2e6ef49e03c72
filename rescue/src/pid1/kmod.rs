//! Kernel module loading by hardware: the builder's tables beside the
//! modules, `/lib/modules/<kver>/defib.load` (every module the image carries
//! and the modules each needs) and `defib.alias` (each module's device
//! aliases from its `.modinfo`, and the modules loaded on every machine).
//!
//! This is not modprobe and not udev: no parameters, no blacklists, no
//! install commands, no symbol versions. It matches a device's `modalias`
//! against the aliases (shell globs, as modprobe matches them), and loads
//! the matching modules after the modules they depend on, several at once.
//! The scheduling ([`Sched`]) is plain data, tested without a kernel; the
//! threads that call the kernel ([`Loader`]) are a thin frame around it.
//! The builder stores each module as one zstd frame (`.ko.zst`), which the
//! rescue decompresses and hands to `init_module(2)`; `.ko` and Debian's
//! `.ko.xz` (decompressed by the kernel, MODULE_INIT_COMPRESSED_FILE) load
//! by `finit_module(2)`. The kernel checks Debian's signature, which sits
//! inside the compression, under lockdown.

use crate::layout::{MODULE_ALIASES, MODULE_LIST};
use crate::report::ModuleFailure;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
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

fn safe_path(p: &str) -> bool {
    !p.starts_with('/') && !p.split('/').any(|c| c == "..")
}

/// Parses `defib.load`: per line a module path relative to the modules
/// directory, then the paths of its direct dependencies, separated by
/// spaces; blank lines and `#` comments are skipped. Paths that try to
/// leave the directory are dropped (the list is input like any other).
pub fn parse_load_list(text: &str) -> Vec<LoadEntry> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let path = words.next().filter(|p| safe_path(p))?;
            Some(LoadEntry {
                path: path.to_string(),
                deps: words.filter(|p| safe_path(p)).map(str::to_string).collect(),
            })
        })
        .collect()
}

/// One device alias of a module (`alias=` in its `.modinfo`), a shell
/// glob matched against a device's `modalias`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    pub pattern: String,
    /// The pattern up to its first wildcard: a cheap first test.
    prefix_len: usize,
    pub path: String,
}

impl Alias {
    pub fn new(pattern: &str, path: &str) -> Alias {
        Alias {
            prefix_len: pattern.find(['*', '?', '[']).unwrap_or(pattern.len()),
            pattern: pattern.to_string(),
            path: path.to_string(),
        }
    }

    pub fn matches(&self, modalias: &str) -> bool {
        modalias
            .as_bytes()
            .starts_with(&self.pattern.as_bytes()[..self.prefix_len])
            && glob_match(self.pattern.as_bytes(), modalias.as_bytes())
    }
}

/// fnmatch(3) without flags, as modprobe matches aliases: `*` any run,
/// `?` one byte, `[...]` a set with ranges, negated by a leading `!` or
/// `^`. An unterminated `[` matches itself.
pub fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    // Where to resume after the last `*`: (pattern index, string index).
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        let step = match pat.get(p) {
            Some(b'*') => {
                star = Some((p + 1, i));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => match class(&pat[p..], s[i]) {
                Some((true, len)) => Some(p + len),
                Some((false, _)) => None,
                None if s[i] == b'[' => Some(p + 1),
                None => None,
            },
            Some(c) if *c == s[i] => Some(p + 1),
            _ => None,
        };
        match (step, star) {
            (Some(np), _) => {
                p = np;
                i += 1;
            }
            (None, Some((sp, si))) => {
                p = sp;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            (None, None) => return false,
        }
    }
    pat[p..].iter().all(|c| *c == b'*')
}

/// Matches `c` against the bracket expression at the start of `pat`:
/// `Some((matched, length of the expression))`, `None` if unterminated.
fn class(pat: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut j = 1;
    let negate = matches!(pat.get(j), Some(b'!') | Some(b'^'));
    if negate {
        j += 1;
    }
    let mut hit = false;
    let mut first = true;
    loop {
        let lo = *pat.get(j)?;
        if lo == b']' && !first {
            return Some((hit != negate, j + 1));
        }
        first = false;
        if pat.get(j + 1) == Some(&b'-') && pat.get(j + 2).is_some_and(|h| *h != b']') {
            let hi = pat[j + 2];
            hit |= lo <= c && c <= hi;
            j += 3;
        } else {
            hit |= lo == c;
            j += 1;
        }
    }
}

/// The builder's tables: what the image carries, what each module needs,
/// which devices each drives, and what every machine gets.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub modules: Vec<LoadEntry>,
    pub aliases: Vec<Alias>,
    /// Loaded whatever the hardware: filesystems, device mapper, ciphers,
    /// code pages.
    pub always: Vec<String>,
}

impl Table {
    /// Parses `defib.load` and `defib.alias`. Per line of the latter:
    /// `always <path>` or `alias <pattern> <path>`; `#` starts a comment
    /// line. Unknown paths and lines are dropped.
    pub fn parse(load: &str, aliases: &str) -> Table {
        let modules = parse_load_list(load);
        let known = |p: &str| modules.iter().any(|m| m.path == p);
        let mut t = Table::default();
        for l in aliases.lines() {
            let l = l.trim();
            if l.starts_with('#') {
                continue;
            }
            if let Some(path) = l.strip_prefix("always ") {
                let path = path.trim();
                if known(path) {
                    t.always.push(path.to_string());
                }
            } else if let Some(rest) = l.strip_prefix("alias ") {
                if let Some((pat, path)) = rest.trim().rsplit_once(' ') {
                    if known(path) && !pat.trim().is_empty() {
                        t.aliases.push(Alias::new(pat.trim(), path));
                    }
                }
            }
        }
        t.modules = modules;
        t
    }

    /// Reads both tables from the modules directory.
    pub fn read(dir: &Path) -> std::io::Result<Table> {
        let load = std::fs::read_to_string(dir.join(MODULE_LIST))?;
        let aliases = std::fs::read_to_string(dir.join(MODULE_ALIASES))?;
        Ok(Table::parse(&load, &aliases))
    }

    /// Paths of the modules with an alias matching `modalias`, each once.
    pub fn matching(&self, modalias: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for a in &self.aliases {
            if a.matches(modalias) && !out.contains(&a.path) {
                out.push(a.path.clone());
            }
        }
        out
    }
}

/// Where one module stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Wanted,
    Loading,
    Loaded,
    /// Its hardware is absent (ENODEV), or a module it needs is.
    NotApplicable,
    Failed,
}

/// Which module to load next: a module is loaded once every module it
/// needs is, in the order modules were asked for, any number at a time.
/// Modules asked for in the background (those every machine gets) come
/// after every ready module a device asked for, and their loads run at
/// the lowest CPU priority: on a slow machine they would otherwise take
/// the CPU from the drivers the wait for disks depends on. A device that
/// needs one of them makes it, and what it needs, urgent.
/// Plain data; [`Loader`] runs it on threads.
#[derive(Debug, Default)]
pub struct Sched {
    deps: BTreeMap<String, Vec<String>>,
    state: BTreeMap<String, State>,
    order: Vec<String>,
    /// Asked for in the background only, so far.
    background: BTreeSet<String>,
    /// Background loads under way that became urgent: their threads go
    /// back to normal priority ([`Sched::take_raised`]).
    raised: Vec<String>,
    pub summary: LoadSummary,
    /// One line per failure, for the console.
    pub log: Vec<String>,
}

impl Sched {
    pub fn new(modules: &[LoadEntry]) -> Sched {
        Sched {
            deps: modules
                .iter()
                .map(|m| (m.path.clone(), m.deps.clone()))
                .collect(),
            ..Sched::default()
        }
    }

    /// Asks for `path` and, first, everything it needs. Returns whether
    /// anything new was asked for; a path the image does not carry is
    /// ignored.
    pub fn want(&mut self, path: &str) -> bool {
        self.ask(path, false)
    }

    /// Asks for `path` and what it needs in the background, unless a
    /// device asked for them already. Returns whether anything was new.
    pub fn want_background(&mut self, path: &str) -> bool {
        self.ask(path, true)
    }

    fn ask(&mut self, path: &str, background: bool) -> bool {
        if !background {
            self.raise(path);
        }
        if self.state.contains_key(path) {
            return false;
        }
        let Some(deps) = self.deps.get(path).cloned() else {
            return false;
        };
        // Marked first, so a cycle in a hostile table ends.
        self.state.insert(path.to_string(), State::Wanted);
        if background {
            self.background.insert(path.to_string());
        }
        for d in &deps {
            self.ask(d, background);
        }
        self.order.push(path.to_string());
        true
    }

    /// Makes `path` and everything it needs urgent (no longer background).
    fn raise(&mut self, path: &str) {
        if !self.background.remove(path) {
            return;
        }
        if self.state.get(path) == Some(&State::Loading) {
            self.raised.push(path.to_string());
        }
        for d in self.deps.get(path).cloned().unwrap_or_default() {
            self.raise(&d);
        }
    }

    /// Whether `path` is (so far) wanted in the background only.
    pub fn is_background(&self, path: &str) -> bool {
        self.background.contains(path)
    }

    /// Background loads under way that a device now waits for.
    pub fn take_raised(&mut self) -> Vec<String> {
        std::mem::take(&mut self.raised)
    }

    /// The next module whose dependencies are all loaded, now marked as
    /// loading. Modules that need one that failed or is not applicable
    /// are settled on the way.
    pub fn take_ready(&mut self) -> Option<String> {
        self.take_ready_of(false)
            .or_else(|| self.take_ready_of(true))
    }

    fn take_ready_of(&mut self, background: bool) -> Option<String> {
        for i in 0..self.order.len() {
            let path = &self.order[i];
            if self.state[path] != State::Wanted || self.background.contains(path) != background {
                continue;
            }
            let deps = &self.deps[path];
            let blocked = deps.iter().find_map(|d| match self.state.get(d) {
                Some(State::Failed) => Some((d, State::Failed)),
                Some(State::NotApplicable) => Some((d, State::NotApplicable)),
                _ => None,
            });
            if let Some((dep, s)) = blocked {
                let (path, dep) = (path.clone(), dep.clone());
                if s == State::NotApplicable {
                    self.summary.not_applicable.push(path.clone());
                } else {
                    // Loading it would only fail on unknown symbols.
                    self.log.push(format!(
                        "module {path}: skipped, it needs {dep}, which failed"
                    ));
                    self.summary.failed.push(ModuleFailure {
                        module: path.clone(),
                        error: format!("skipped: needs {dep}, which failed"),
                    });
                }
                self.state.insert(path, s);
                continue;
            }
            if deps
                .iter()
                .all(|d| self.state.get(d).is_none_or(|s| *s == State::Loaded))
            {
                let path = path.clone();
                self.state.insert(path.clone(), State::Loading);
                return Some(path);
            }
        }
        None
    }

    /// Records how loading `path` went and how long it took.
    pub fn done(&mut self, path: &str, res: std::io::Result<()>, took: Duration) {
        self.summary.took.push((path.to_string(), took));
        let s = match res {
            Ok(()) => State::Loaded,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => State::Loaded,
            // The module's init found nothing to drive: not a fault.
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => State::NotApplicable,
            Err(e) => {
                self.log.push(format!("module {path}: {e}"));
                self.summary.failed.push(ModuleFailure {
                    module: path.to_string(),
                    error: e.to_string(),
                });
                State::Failed
            }
        };
        match s {
            State::Loaded => self.summary.loaded.push(path.to_string()),
            State::NotApplicable => self.summary.not_applicable.push(path.to_string()),
            _ => {}
        }
        self.state.insert(path.to_string(), s);
    }

    /// Nothing asked for is waiting or loading.
    pub fn idle(&self) -> bool {
        self.idle_but(|_, _| false)
    }

    /// Nothing a device asked for is waiting or loading: every device seen
    /// so far has its driver (background loads may run on).
    pub fn devices_idle(&self) -> bool {
        self.idle_but(|_, background| background)
    }

    /// Nothing is waiting or loading except modules for which
    /// `skip(path, background)` holds.
    pub fn idle_but(&self, skip: impl Fn(&str, bool) -> bool) -> bool {
        !self.state.iter().any(|(p, s)| {
            matches!(s, State::Wanted | State::Loading) && !skip(p, self.background.contains(p))
        })
    }
}

/// What loading did.
#[derive(Debug, Clone, Default)]
pub struct LoadSummary {
    /// Loaded now, or already present (EEXIST), in the order they finished.
    pub loaded: Vec<String>,
    pub failed: Vec<ModuleFailure>,
    /// Modules whose hardware is absent (ENODEV: no AES-NI, not on
    /// Hyper-V or Xen, …) and those left out because one they need is.
    pub not_applicable: Vec<String>,
    /// How many modules the image carries.
    pub carried: usize,
    /// Each module tried, with how long `finit_module` took (its init,
    /// including the probes the kernel waits for).
    pub took: Vec<(String, Duration)>,
    pub elapsed: Duration,
}

impl LoadSummary {
    /// The one-line summary for the console.
    pub fn line(&self) -> String {
        format!(
            "modules: {} loaded of {} carried, {} not for this hardware, {} failed, {:.1} s",
            self.loaded.len(),
            self.carried,
            self.not_applicable.len(),
            self.failed.len(),
            self.elapsed.as_secs_f64()
        )
    }

    /// The `n` slowest loads, for the console: `ahci 0.41 s, …`.
    pub fn slowest(&self, n: usize) -> String {
        let mut v = self.took.clone();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.iter()
            .take(n)
            .map(|(p, t)| format!("{} {:.2} s", module_name(p), t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Modules only a BitLocker volume needs: device mapper and ciphers (the
/// `crypto` group every machine gets). Asked for in the background, they
/// are waited for before a BitLocker volume is unlocked, not before the
/// disks are looked at.
pub fn bitlocker_only(path: &str) -> bool {
    [
        "kernel/drivers/md/",
        "kernel/crypto/",
        "kernel/arch/x86/crypto/",
        "kernel/lib/crypto/",
    ]
    .iter()
    .any(|d| path.starts_with(d))
}

/// `<root>/lib/modules/<kver>`.
pub fn modules_dir(root: &Path, kver: &str) -> PathBuf {
    root.join("lib/modules").join(kver)
}

/// Loads one module file (a path inside the modules directory).
pub type LoadFn = dyn Fn(&Path) -> std::io::Result<()> + Send + Sync;

struct Shared {
    sched: Sched,
    stop: bool,
    /// The thread (its kernel id) loading each module under way.
    threads: BTreeMap<String, libc::pid_t>,
    /// When the last load ended.
    last_done: Option<Instant>,
}

/// Threads that load what [`Sched`] hands out. A failure is recorded and
/// the next module tried: a missing NIC driver must not stop a disk repair.
pub struct Loader {
    shared: Arc<(Mutex<Shared>, Condvar)>,
    table: Table,
    start: Instant,
}

impl Loader {
    /// Starts `threads` loaders over `table`'s modules in `dir`.
    pub fn start(dir: &Path, table: Table, threads: usize, load: Arc<LoadFn>) -> Loader {
        let shared = Arc::new((
            Mutex::new(Shared {
                sched: Sched::new(&table.modules),
                stop: false,
                threads: BTreeMap::new(),
                last_done: None,
            }),
            Condvar::new(),
        ));
        for _ in 0..threads.max(1) {
            let (shared, load, dir) = (shared.clone(), load.clone(), dir.to_path_buf());
            std::thread::spawn(move || worker(&shared, &*load, &dir));
        }
        Loader {
            shared,
            table,
            start: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Asks for the modules every machine gets, in the background: they
    /// load at the lowest priority while the devices' drivers probe.
    /// The filesystems are asked for before device mapper and the ciphers:
    /// the disks are mounted right after they appear, while BitLocker's
    /// modules are waited for only before an unlock and the report.
    /// Modules for which `skip(path)` holds are left out (efivarfs on a
    /// machine not booted through UEFI, where there is nothing to mount).
    pub fn want_always(&self, skip: impl Fn(&str) -> bool) -> usize {
        let mut g = self.lock();
        let (crypto, fs): (Vec<&String>, Vec<&String>) = self
            .table
            .always
            .iter()
            .filter(|p| !skip(p))
            .partition(|p| bitlocker_only(p));
        let n = fs
            .into_iter()
            .chain(crypto)
            .filter(|p| g.sched.want_background(p))
            .count();
        drop(g);
        self.shared.1.notify_all();
        n
    }

    /// Asks for the modules that drive a device with this `modalias`.
    /// Those only BitLocker needs go to the background even when a device
    /// matches them: the CPU's own modalias names its accelerated ciphers
    /// (aesni-intel, ghash-clmulni, …), whose loads and self-tests would
    /// otherwise run first and hold up the disk drivers.
    pub fn want_for(&self, modalias: &str) -> usize {
        let (background, urgent): (Vec<String>, Vec<String>) = self
            .table
            .matching(modalias)
            .into_iter()
            .partition(|p| bitlocker_only(p));
        let mut g = self.lock();
        let n = background
            .iter()
            .filter(|p| g.sched.want_background(p))
            .count();
        drop(g);
        n + self.want(&urgent)
    }

    /// Asks for `paths` (and what they need); returns how many were new.
    pub fn want(&self, paths: &[String]) -> usize {
        let mut g = self.lock();
        let n = paths.iter().filter(|p| g.sched.want(p)).count();
        // A device waits for a background load under way: it runs on at
        // normal priority.
        for p in g.sched.take_raised() {
            if let Some(tid) = g.threads.get(&p) {
                set_nice(*tid, 0);
            }
        }
        drop(g);
        self.shared.1.notify_all();
        n
    }

    pub fn idle(&self) -> bool {
        self.lock().sched.idle()
    }

    /// Every module a device asked for is loaded (or settled).
    pub fn devices_idle(&self) -> bool {
        self.lock().sched.devices_idle()
    }

    /// Waits until idle or `limit` passes; returns whether idle.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        self.wait_idle_but(|_, _| false, limit)
    }

    /// Waits until nothing but modules for which `skip(path, background)`
    /// holds is waiting or loading, or `limit` passes; returns whether so.
    pub fn wait_idle_but(&self, skip: impl Fn(&str, bool) -> bool, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        let mut g = self.lock();
        while !g.sched.idle_but(&skip) {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = self
                .shared
                .1
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Failure lines not yet shown.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().sched.log)
    }

    /// What was loaded so far, and since when.
    pub fn summary(&self) -> LoadSummary {
        let g = self.lock();
        let mut s = g.sched.summary.clone();
        s.carried = self.table.modules.len();
        // Until the last load ended: background loads may end long after
        // the wait for devices, and the time after them is not loading.
        s.elapsed = match (g.sched.idle(), g.last_done) {
            (true, Some(t)) => t.saturating_duration_since(self.start),
            _ => self.start.elapsed(),
        };
        s
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.lock().stop = true;
        self.shared.1.notify_all();
    }
}

fn worker(shared: &(Mutex<Shared>, Condvar), load: &LoadFn, dir: &Path) {
    let (m, cv) = shared;
    let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if g.stop {
            return;
        }
        let Some(path) = g.sched.take_ready() else {
            g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
            continue;
        };
        let tid = gettid();
        let background = g.sched.is_background(&path);
        g.threads.insert(path.clone(), tid);
        // Under the lock, so a raise (which renices through `threads`)
        // cannot come between.
        if background {
            set_nice(tid, BACKGROUND_NICE);
        }
        drop(g);
        let t = Instant::now();
        let res = load(&dir.join(&path));
        let took = t.elapsed();
        g = m.lock().unwrap_or_else(|p| p.into_inner());
        g.threads.remove(&path);
        if background {
            set_nice(tid, 0);
        }
        g.sched.done(&path, res, took);
        g.last_done = Some(Instant::now());
        cv.notify_all();
    }
}

/// The nice value of a thread loading a background module: it gets the
/// CPU only when no other load or step wants it.
const BACKGROUND_NICE: libc::c_int = 19;

/// The calling thread's kernel id.
fn gettid() -> libc::pid_t {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}

/// Sets one thread's nice value; a failure only costs speed.
fn set_nice(tid: libc::pid_t, nice: libc::c_int) {
    // SAFETY: plain syscall on a thread id; PRIO_PROCESS with a thread id
    // sets that thread's priority on Linux.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice);
    }
}

/// A module's name as the kernel knows it, from its path: the file name
/// before `.ko`, with `-` as `_` (`kernel/drivers/usb/storage/usb-storage.ko.zst`
/// -> `usb_storage`).
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.split(".ko").next().unwrap_or(base).replace('-', "_")
}

/// Module parameters the rescue sets, by module name.
/// usb-storage waits `delay_use` (1 s) before scanning a new stick for
/// devices that need time after a reset; the rescue's wait for the medium
/// already bounds that (`defib.wait`), so the second is not spent up front.
pub const PARAMS: &[(&str, &CStr)] = &[("usb_storage", c"delay_use=0")];

/// The parameters for the module at `path` (empty if none).
pub fn params_for(path: &Path) -> &'static CStr {
    let name = module_name(&path.to_string_lossy());
    PARAMS
        .iter()
        .find(|(m, _)| *m == name)
        .map_or(c"", |(_, p)| p)
}

/// The largest module the rescue decompresses (the biggest Debian
/// carries, mlx5_core, is about 5 MiB): a bound on what a damaged or
/// hostile initramfs can make it allocate.
const MODULE_MAX: usize = 64 << 20;

/// Hands one module file to the kernel: a `.ko.zst` (how the builder
/// stores them) is decompressed here and given to `init_module(2)`; a
/// `.ko` or `.ko.xz` goes by `finit_module(2)`. Either way the kernel
/// checks the signature appended to the module, which the compression
/// wraps whole.
pub fn finit_module(path: &Path) -> std::io::Result<()> {
    if path.extension().is_some_and(|e| e == "zst") {
        return init_module_zst(path);
    }
    let f = File::open(path)?;
    let params = params_for(path);
    // Modules the builder stored uncompressed load without the flag.
    let flags = if path.extension().is_some_and(|e| e == "xz") {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    // SAFETY: the fd is open for the whole call and the parameter string is
    // a NUL-terminated static; finit_module reads both and keeps neither.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            f.as_raw_fd(),
            params.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The module inside a `.ko.zst`: one zstd frame that records its size.
pub fn decompress_zst(z: &[u8]) -> std::io::Result<Vec<u8>> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let size = zstd::zstd_safe::get_frame_content_size(z)
        .map_err(|_| bad("not a zstd frame".into()))?
        .ok_or_else(|| bad("the zstd frame does not record its size".into()))?;
    let size = usize::try_from(size)
        .ok()
        .filter(|s| *s <= MODULE_MAX)
        .ok_or_else(|| bad(format!("a module of {size} bytes is too large")))?;
    let out = zstd::bulk::decompress(z, size).map_err(|e| bad(format!("zstd: {e}")))?;
    if out.len() != size {
        return Err(bad(format!(
            "decompressed to {} bytes, the frame says {size}",
            out.len()
        )));
    }
    Ok(out)
}

fn init_module_zst(path: &Path) -> std::io::Result<()> {
    let image = decompress_zst(&std::fs::read(path)?)?;
    let params = params_for(path);
    // SAFETY: the buffer and the NUL-terminated parameter string live for
    // the whole call; init_module copies both and keeps neither.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_init_module,
            image.as_ptr(),
            image.len() as libc::c_ulong,
            params.as_ptr(),
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
    fn zst_modules_decompress_whole_or_not_at_all() {
        let module = b"\x7fELF...module bytes...~Module signature appended~\n".repeat(50);
        let z = zstd::bulk::compress(&module, 19).unwrap();
        assert_eq!(decompress_zst(&z).unwrap(), module);
        let e = decompress_zst(&z[..z.len() - 4]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
        let e = decompress_zst(b"\x7fELF plain").unwrap_err();
        assert!(e.to_string().contains("not a zstd frame"), "{e}");
        // A frame header that claims more than any module is refused
        // before anything is allocated: magic, a descriptor for a single
        // segment with an 8-byte content size, the size.
        let mut hdr = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
        hdr.extend((MODULE_MAX as u64 + 1).to_le_bytes());
        let e = decompress_zst(&hdr).unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
    }

    fn err(n: i32) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(n))
    }

    #[test]
    fn parses_list_with_comments_and_blanks() {
        let text = "# storage first\nkernel/drivers/ata/libata.ko.xz\n\n  kernel/drivers/ata/ahci.ko.xz kernel/drivers/ata/libata.ko.xz # AHCI\n#x\n";
        let got = parse_load_list(text);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].path, "kernel/drivers/ata/ahci.ko.xz");
        assert_eq!(got[1].deps, ["kernel/drivers/ata/libata.ko.xz"]);
    }

    #[test]
    fn drops_paths_that_escape() {
        assert!(parse_load_list("/etc/passwd\n../x.ko\nkernel/../../y.ko\n").is_empty());
    }

    #[test]
    fn globs_match_as_fnmatch_does() {
        let m = |p: &str, s: &str| glob_match(p.as_bytes(), s.as_bytes());
        assert!(m(
            "pci:v*d*sv*sd*bc01sc06i01*",
            "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"
        ));
        assert!(!m(
            "pci:v*d*sv*sd*bc01sc08i02*",
            "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"
        ));
        assert!(m("usb:v0BDAp8153d[1-2]*dc*", "usb:v0BDAp8153d2000dcFF"));
        assert!(!m("usb:v0BDAp8153d[1-2]*dc*", "usb:v0BDAp8153d3000dcFF"));
        assert!(m("a[!0-9]c", "abc") && !m("a[!0-9]c", "a1c"));
        assert!(m("a[]]c", "a]c"));
        assert!(m("x?z", "xyz") && !m("x?z", "xz"));
        assert!(m("*", "") && m("a*", "a") && !m("a", "ab") && !m("ab", "a"));
        assert!(m("a[b", "a[b"), "an unterminated set matches itself");
        assert!(m("*bc*i30*", "pci:v1b36d000Dbc0Csc03i30"));
    }

    const LOAD: &str = "libata.ko.xz\nahci.ko.xz libata.ko.xz\nnvme-core.ko.xz\nnvme.ko.xz nvme-core.ko.xz\nntfs3.ko.xz\n";
    const ALIASES: &str = "# test\nalways ntfs3.ko.xz\nalways ../evil.ko.xz\n\
        alias pci:v*d*sv*sd*bc01sc06i01* ahci.ko.xz\n\
        alias pci:v*d*sv*sd*bc01sc08i02* nvme.ko.xz\n\
        alias pci:v00008086d00002922sv*sd*bc*sc*i* ahci.ko.xz\n\
        alias pci:v* unknown.ko.xz\nnonsense\n";

    #[test]
    fn table_matches_devices_to_modules() {
        let t = Table::parse(LOAD, ALIASES);
        assert_eq!(t.always, ["ntfs3.ko.xz"]);
        assert_eq!(t.aliases.len(), 3, "the unknown module's alias is dropped");
        assert_eq!(
            t.matching("pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"),
            ["ahci.ko.xz"],
            "two aliases of one module give it once"
        );
        assert_eq!(
            t.matching("pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02"),
            ["nvme.ko.xz"]
        );
        assert!(t
            .matching("usb:v0627p0001d0000dc00dsc00dp00ic08isc06ip50in00")
            .is_empty());
    }

    #[test]
    fn sched_loads_dependencies_first_and_only_what_is_asked() {
        let t = Table::parse(LOAD, ALIASES);
        let mut s = Sched::new(&t.modules);
        assert!(s.idle());
        assert!(s.want("ahci.ko.xz"));
        assert!(!s.want("ahci.ko.xz"));
        assert!(!s.want("nothere.ko.xz"));
        assert_eq!(s.take_ready().as_deref(), Some("libata.ko.xz"));
        assert_eq!(s.take_ready(), None, "ahci waits for libata");
        assert!(!s.idle());
        s.done("libata.ko.xz", Ok(()), Duration::from_millis(30));
        assert_eq!(s.take_ready().as_deref(), Some("ahci.ko.xz"));
        s.done("ahci.ko.xz", err(libc::EEXIST), Duration::from_millis(400));
        assert_eq!(s.summary.slowest(1), "ahci 0.40 s");
        assert!(s.idle());
        assert_eq!(s.summary.loaded, ["libata.ko.xz", "ahci.ko.xz"]);
    }

    #[test]
    fn background_modules_come_after_the_devices_drivers() {
        let load =
            "crc.ko\ndm-mod.ko\ndm-crypt.ko dm-mod.ko crc.ko\nlibata.ko\nahci.ko libata.ko\n";
        let mut s = Sched::new(&parse_load_list(load));
        assert!(s.want_background("dm-crypt.ko"));
        assert!(s.want("ahci.ko"));
        assert!(s.is_background("dm-crypt.ko") && s.is_background("crc.ko"));
        assert!(!s.devices_idle() && !s.idle());
        // The driver first though asked for later; the rest fill idle threads.
        assert_eq!(s.take_ready().as_deref(), Some("libata.ko"));
        assert_eq!(s.take_ready().as_deref(), Some("dm-mod.ko"));
        assert_eq!(s.take_ready().as_deref(), Some("crc.ko"));
        assert_eq!(s.take_ready(), None);
        s.done("libata.ko", Ok(()), Duration::ZERO);
        assert_eq!(s.take_ready().as_deref(), Some("ahci.ko"));
        s.done("ahci.ko", Ok(()), Duration::ZERO);
        assert!(
            s.devices_idle(),
            "background loads do not hold the devices up"
        );
        assert!(!s.idle());
        assert!(
            !s.idle_but(|p, bg| bg && p.starts_with("dm-")),
            "crc.ko runs"
        );
        s.done("crc.ko", Ok(()), Duration::ZERO);
        assert!(s.idle_but(|p, bg| bg && p.starts_with("dm-")));
        s.done("dm-mod.ko", Ok(()), Duration::ZERO);
        assert_eq!(s.take_ready().as_deref(), Some("dm-crypt.ko"));
        s.done("dm-crypt.ko", Ok(()), Duration::ZERO);
        assert!(s.idle());
    }

    #[test]
    fn a_device_that_needs_a_background_module_makes_it_urgent() {
        let load = "cdrom.ko\nisofs.ko cdrom.ko\nsr_mod.ko cdrom.ko\n";
        let mut s = Sched::new(&parse_load_list(load));
        s.want_background("isofs.ko");
        assert_eq!(s.take_ready().as_deref(), Some("cdrom.ko"));
        assert!(s.devices_idle());
        s.want("sr_mod.ko");
        assert!(!s.is_background("cdrom.ko") && s.is_background("isofs.ko"));
        assert_eq!(
            s.take_raised(),
            ["cdrom.ko"],
            "its load goes on at normal priority"
        );
        assert!(s.take_raised().is_empty());
        assert!(!s.devices_idle(), "sr_mod waits for cdrom");
        s.done("cdrom.ko", Ok(()), Duration::ZERO);
        assert_eq!(s.take_ready().as_deref(), Some("sr_mod.ko"));
        assert_eq!(s.take_ready().as_deref(), Some("isofs.ko"));
        // Asked for by a device, a background module is urgent at once.
        let mut s = Sched::new(&parse_load_list(load));
        s.want_background("isofs.ko");
        s.want("isofs.ko");
        assert!(!s.is_background("isofs.ko") && !s.is_background("cdrom.ko"));
        assert!(s.take_raised().is_empty(), "nothing was loading");
    }

    #[test]
    fn only_device_mapper_and_ciphers_are_for_bitlocker_only() {
        for p in [
            "kernel/drivers/md/dm-crypt.ko",
            "kernel/crypto/xts.ko",
            "kernel/arch/x86/crypto/aesni-intel.ko",
            "kernel/lib/crypto/gf128mul.ko",
        ] {
            assert!(bitlocker_only(p), "{p}");
        }
        for p in [
            "kernel/fs/ntfs3/ntfs3.ko",
            "kernel/fs/nls/nls_utf8.ko",
            "kernel/drivers/ata/ahci.ko",
            "kernel/lib/crc-itu-t.ko",
        ] {
            assert!(!bitlocker_only(p), "{p}");
        }
    }

    #[test]
    fn independent_modules_are_handed_out_together() {
        let t = Table::parse(LOAD, ALIASES);
        let mut s = Sched::new(&t.modules);
        s.want("ahci.ko.xz");
        s.want("nvme.ko.xz");
        s.want("ntfs3.ko.xz");
        let mut first = vec![];
        while let Some(p) = s.take_ready() {
            first.push(p);
        }
        assert_eq!(first, ["libata.ko.xz", "nvme-core.ko.xz", "ntfs3.ko.xz"]);
    }

    #[test]
    fn absent_hardware_is_not_a_failure_and_dependants_follow() {
        let load = "hv_vmbus.ko.xz\nhv_storvsc.ko.xz hv_vmbus.ko.xz\nbad.ko.xz\nuser.ko.xz bad.ko.xz\nok.ko.xz\n";
        let mut s = Sched::new(&parse_load_list(load));
        for p in ["hv_storvsc.ko.xz", "user.ko.xz", "ok.ko.xz"] {
            s.want(p);
        }
        let mut tried = vec![];
        while let Some(p) = s.take_ready() {
            let r = match p.as_str() {
                "hv_vmbus.ko.xz" => err(libc::ENODEV),
                "bad.ko.xz" => err(libc::EKEYREJECTED),
                _ => Ok(()),
            };
            tried.push(p.clone());
            s.done(&p, r, Duration::ZERO);
        }
        assert!(s.idle());
        assert_eq!(tried, ["hv_vmbus.ko.xz", "bad.ko.xz", "ok.ko.xz"]);
        assert_eq!(
            s.summary.not_applicable,
            ["hv_vmbus.ko.xz", "hv_storvsc.ko.xz"]
        );
        let failed: Vec<_> = s.summary.failed.iter().map(|f| f.module.as_str()).collect();
        assert_eq!(failed, ["bad.ko.xz", "user.ko.xz"]);
        assert_eq!(s.summary.loaded, ["ok.ko.xz"]);
        assert_eq!(s.log.len(), 2);
    }

    #[test]
    fn a_cycle_in_the_table_does_not_hang() {
        let mut s = Sched::new(&parse_load_list("a.ko.xz b.ko.xz\nb.ko.xz a.ko.xz\n"));
        assert!(s.want("a.ko.xz"));
        assert_eq!(s.take_ready(), None);
    }

    /// A loader over the tables `load` and `aliases` whose loads only
    /// record the file names, in the order loaded.
    fn recording_loader(
        load: &str,
        aliases: &str,
        threads: usize,
    ) -> (Loader, Arc<Mutex<Vec<String>>>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MODULE_LIST), load).unwrap();
        std::fs::write(dir.path().join(MODULE_ALIASES), aliases).unwrap();
        let table = Table::read(dir.path()).unwrap();
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let rec = seen.clone();
        let load: Arc<LoadFn> = Arc::new(move |p: &Path| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            rec.lock().unwrap().push(name);
            Ok(())
        });
        (Loader::start(dir.path(), table, threads, load), seen, dir)
    }

    #[test]
    fn loader_threads_respect_dependencies() {
        let (l, seen, _dir) = recording_loader(LOAD, ALIASES, 3);
        assert_eq!(l.want_always(|_| false), 1);
        assert_eq!(
            l.want_for("pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02"),
            1
        );
        assert_eq!(
            l.want_for("pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"),
            1
        );
        assert!(l.wait_idle(Duration::from_secs(60)));
        let seen = seen.lock().unwrap().clone();
        let pos = |n: &str| seen.iter().position(|s| s == n).unwrap();
        assert_eq!(seen.len(), 5);
        assert!(pos("libata.ko.xz") < pos("ahci.ko.xz"));
        assert!(pos("nvme-core.ko.xz") < pos("nvme.ko.xz"));
        let sum = l.summary();
        assert_eq!((sum.loaded.len(), sum.carried), (5, 5));
        assert!(sum
            .line()
            .starts_with("modules: 5 loaded of 5 carried, 0 not for this hardware, 0 failed"));
    }

    #[test]
    fn ciphers_the_cpu_matches_do_not_hold_up_the_disks() {
        let dir = tempfile::tempdir().unwrap();
        let load_list = "kernel/arch/x86/crypto/aesni-intel.ko\nkernel/drivers/ata/libata.ko\n\
            kernel/drivers/ata/ahci.ko kernel/drivers/ata/libata.ko\n";
        let aliases = "alias cpu:type:x86,ven*fam*mod*:feature:*0099* kernel/arch/x86/crypto/aesni-intel.ko\n\
            alias pci:v*d*sv*sd*bc01sc06i01* kernel/drivers/ata/ahci.ko\n";
        std::fs::write(dir.path().join(MODULE_LIST), load_list).unwrap();
        std::fs::write(dir.path().join(MODULE_ALIASES), aliases).unwrap();
        let table = Table::read(dir.path()).unwrap();
        // Nothing finishes until the gate opens: what is asked for stays
        // waiting or loading while the test looks.
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let g2 = gate.clone();
        let load: Arc<LoadFn> = Arc::new(move |_: &Path| {
            let (m, cv) = &*g2;
            let mut open = m.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            Ok(())
        });
        let l = Loader::start(dir.path(), table, 2, load);
        let cpu = "cpu:type:x86,ven0000fam0006mod0055:feature:,0000,0001,0099,00E8";
        assert_eq!(l.want_for(cpu), 1);
        assert!(
            l.devices_idle(),
            "the CPU's cipher driver loads in the background"
        );
        assert_eq!(
            l.want_for("pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"),
            1
        );
        assert!(
            !l.devices_idle(),
            "the disk controller's driver is waited for"
        );
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        assert!(l.wait_idle(Duration::from_secs(60)));
        assert_eq!(l.summary().loaded.len(), 3);
    }

    #[test]
    fn filesystems_load_before_bitlocker_modules_and_skips_are_left_out() {
        let load_list = "kernel/drivers/md/dm-mod.ko\nkernel/crypto/xts.ko\n\
            kernel/fs/ntfs3/ntfs3.ko\nkernel/fs/efivarfs/efivarfs.ko\n";
        // The builder lists device mapper and ciphers first.
        let aliases = "always kernel/drivers/md/dm-mod.ko\nalways kernel/crypto/xts.ko\n\
            always kernel/fs/ntfs3/ntfs3.ko\nalways kernel/fs/efivarfs/efivarfs.ko\n";
        // One thread: the order asked for is the order loaded.
        let (l, seen, _dir) = recording_loader(load_list, aliases, 1);
        assert_eq!(l.want_always(|p| p.contains("/efivarfs/")), 3);
        assert!(l.wait_idle(Duration::from_secs(60)));
        assert_eq!(
            *seen.lock().unwrap(),
            ["ntfs3.ko", "dm-mod.ko", "xts.ko"],
            "filesystems first, efivarfs skipped"
        );
    }

    #[test]
    fn usb_storage_scans_at_once() {
        let p = |s: &str| params_for(Path::new(s)).to_str().unwrap();
        assert_eq!(
            p("/lib/modules/k/kernel/drivers/usb/storage/usb-storage.ko.xz"),
            "delay_use=0"
        );
        assert_eq!(
            p("kernel/drivers/usb/storage/usb-storage.ko"),
            "delay_use=0"
        );
        assert_eq!(
            p("kernel/drivers/usb/storage/usb-storage.ko.zst"),
            "delay_use=0",
            "as the builder stores it"
        );
        assert_eq!(p("kernel/drivers/usb/storage/uas.ko.xz"), "");
        assert_eq!(module_name("kernel/drivers/md/dm-mod.ko.zst"), "dm_mod");
        assert_eq!(module_name("ntfs3.ko"), "ntfs3");
    }

    #[test]
    fn missing_tables_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Table::read(dir.path()).is_err());
        std::fs::write(dir.path().join(MODULE_LIST), LOAD).unwrap();
        assert!(
            Table::read(dir.path()).is_err(),
            "the alias table is needed too"
        );
    }
}
