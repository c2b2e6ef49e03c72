//! Screen output: every line goes to every console the kernel was told about
//! (`console=tty0 console=ttyS0` means the screen and the serial port), so a
//! technician at the monitor and a test harness on the serial line see the
//! same thing.
//!
//! This is not a terminal UI: lines are plain text, written once, never
//! redrawn. Colour is used only on the verdict box. Lines logged before the
//! consoles are opened are held back, so the banner is always the first line.

use crate::report::Verdict;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Console paths, published for the panic hook (which cannot borrow the
/// `Console` the failing code may be holding).
static PATHS: OnceLock<Vec<PathBuf>> = OnceLock::new();

/// The set of consoles output goes to.
pub struct Console {
    sinks: Vec<Sink>,
    /// The devices behind `sinks`, for [`Console::reopen`].
    paths: Vec<PathBuf>,
    pending: Vec<String>,
    opened: bool,
}

enum Sink {
    Tty(File),
    Stdout,
}

impl Console {
    /// A console that holds lines until [`Console::open`] is called.
    pub fn pending() -> Console {
        Console {
            sinks: Vec::new(),
            paths: Vec::new(),
            pending: Vec::new(),
            opened: false,
        }
    }

    /// A console that writes to standard output (host mode and tests).
    pub fn stdout() -> Console {
        Console {
            sinks: vec![Sink::Stdout],
            paths: Vec::new(),
            pending: Vec::new(),
            opened: true,
        }
    }

    /// Opens every named console; falls back to `/dev/console`, then to
    /// standard output. Writes `first` (the banner), then any held lines.
    /// Returns the consoles that could not be opened, for the log.
    pub fn open(&mut self, paths: &[PathBuf], first: &str) -> Vec<String> {
        let mut failed = Vec::new();
        let mut opened_paths = Vec::new();
        for p in paths {
            match open_tty(p) {
                Ok(f) => {
                    self.sinks.push(Sink::Tty(f));
                    opened_paths.push(p.clone());
                }
                Err(e) => failed.push(format!("cannot open console {}: {e}", p.display())),
            }
        }
        if self.sinks.is_empty() {
            let console = PathBuf::from("/dev/console");
            match open_tty(&console) {
                Ok(f) => {
                    self.sinks.push(Sink::Tty(f));
                    opened_paths.push(console);
                }
                Err(_) => self.sinks.push(Sink::Stdout),
            }
        }
        let _ = PATHS.set(opened_paths.clone());
        self.paths = opened_paths;
        self.opened = true;
        self.line(first);
        for l in std::mem::take(&mut self.pending) {
            self.line(&l);
        }
        failed
    }

    /// Opens the consoles again. Needed after the shell: when a session
    /// leader exits, the kernel hangs up its controlling tty, and every file
    /// open on it (ours included) then fails writes with EIO.
    pub fn reopen(&mut self) {
        if self.paths.is_empty() {
            return;
        }
        self.sinks = self
            .paths
            .iter()
            .filter_map(|p| open_tty(p).ok())
            .map(Sink::Tty)
            .collect();
        if self.sinks.is_empty() {
            self.sinks.push(Sink::Stdout);
        }
    }

    /// Writes one line to every console (or holds it until they are open).
    /// A console that fails to take the write is skipped: a dead serial
    /// port must not stop a repair.
    pub fn line(&mut self, text: &str) {
        if !self.opened {
            self.pending.push(text.to_string());
            return;
        }
        self.raw(&format!("{text}\n"));
    }

    /// Writes text without a newline (countdowns).
    pub fn raw(&mut self, text: &str) {
        for s in &mut self.sinks {
            let _ = match s {
                Sink::Tty(f) => f.write_all(text.as_bytes()).and_then(|_| f.flush()),
                Sink::Stdout => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(text.as_bytes()).and_then(|_| out.flush())
                }
            };
        }
    }

    /// Prints the verdict box, its reason and next step, then the
    /// machine-readable line `defib: verdict <verdict>`.
    pub fn verdict(&mut self, verdict: Verdict, reason: &str, next_step: &str) {
        for l in render_verdict(verdict, reason, next_step) {
            self.line(&l);
        }
    }
}

/// Opens a console device for writing. O_NONBLOCK only for the open itself:
/// a serial port without CLOCAL would otherwise wait for carrier; cleared
/// afterwards so a full UART buffer slows us down instead of losing text.
/// O_NOCTTY so PID 1 never gains a controlling terminal by accident.
fn open_tty(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)?;
    let flags = rustix::fs::fcntl_getfl(&f)?;
    rustix::fs::fcntl_setfl(&f, flags - rustix::fs::OFlags::NONBLOCK)?;
    Ok(f)
}

/// Best-effort write of `text` to the consoles published by the last
/// [`Console::open`], else `/dev/console`, else stderr. For the panic hook
/// and the fatal path, where no `Console` may be at hand.
pub fn emergency(text: &str) {
    let mut wrote = false;
    let fallback = [PathBuf::from("/dev/console")];
    let paths = PATHS.get().map(|v| v.as_slice()).unwrap_or(&fallback);
    for p in paths {
        if let Ok(mut f) = open_tty(p) {
            wrote |= f.write_all(text.as_bytes()).is_ok();
        }
    }
    if !wrote {
        let _ = std::io::stderr().write_all(text.as_bytes());
    }
}

// ECMA-48 SGR sequences: bold + foreground colour, and reset.
const GREEN: &str = "\x1b[1;32m";
const YELLOW: &str = "\x1b[1;33m";
const RED: &str = "\x1b[1;31m";
const RESET: &str = "\x1b[0m";

/// The words in the verdict box and their colour: green for a repair, yellow
/// when there was nothing to do, red when a person must act.
pub fn verdict_words(v: Verdict) -> (&'static str, &'static str) {
    match v {
        Verdict::Repaired => ("REPAIRED", GREEN),
        Verdict::Clean => ("NOTHING TO DO", YELLOW),
        Verdict::NoWindowsFound => ("NO WINDOWS FOUND", YELLOW),
        Verdict::NeedsAttention => ("NEEDS ATTENTION", RED),
        Verdict::Failed => ("FAILED", RED),
    }
}

/// The verdict block as lines: a blank line, the coloured box, the reason,
/// the next step, and last the plain machine-readable line.
pub fn render_verdict(v: Verdict, reason: &str, next_step: &str) -> Vec<String> {
    let (words, colour) = verdict_words(v);
    let bar = "=".repeat(words.len() + 10);
    vec![
        String::new(),
        format!("{colour}{bar}{RESET}"),
        format!("{colour}==== {words} ===={RESET}"),
        format!("{colour}{bar}{RESET}"),
        format!("  why:  {reason}"),
        format!("  next: {next_step}"),
        String::new(),
        format!("defib: verdict {}", v.as_str()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_block_ends_with_machine_line() {
        let lines = render_verdict(Verdict::NoWindowsFound, "r", "n");
        assert_eq!(lines.last().unwrap(), "defib: verdict no-windows-found");
        assert!(lines[2].contains("==== NO WINDOWS FOUND ===="));
        assert!(lines[2].starts_with(YELLOW));
        assert_eq!(lines[1].len(), lines[2].len());
    }

    #[test]
    fn colours_follow_severity() {
        assert_eq!(verdict_words(Verdict::Repaired).1, GREEN);
        assert_eq!(verdict_words(Verdict::Clean), ("NOTHING TO DO", YELLOW));
        assert_eq!(verdict_words(Verdict::NeedsAttention).1, RED);
        assert_eq!(verdict_words(Verdict::Failed).1, RED);
    }

    #[test]
    fn held_lines_follow_the_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let tty = dir.path().join("ttyFAKE");
        std::fs::write(&tty, "").unwrap();
        let mut c = Console::pending();
        c.line("mounted /proc");
        c.open(std::slice::from_ref(&tty), "defib rescue 0.1.0 starting");
        c.line("after");
        let text = std::fs::read_to_string(&tty).unwrap();
        assert_eq!(text, "defib rescue 0.1.0 starting\nmounted /proc\nafter\n");
    }
}
