//! The recovery-key prompt: when no key file opened a BitLocker volume, a
//! technician types the 48-digit recovery password at the console — screen
//! or serial, whichever they are at.
//!
//! Each group of six digits is checked as it is typed (divisible by 11,
//! quotient below 65536, as Windows' own recovery screen checks), so a typo
//! is caught at the group, not after 48 digits. Digits show as `*`: the key
//! never reaches the screen, the log or the report. Dashes and spaces are
//! skipped; Backspace takes a digit back; Enter on an empty line skips the
//! volume. An unattended boot does not wait forever: with no keystroke for
//! the bound (`defib.keywait=`, 90 s by default) the prompt gives up and
//! the verdict names the protector IDs that need a key.
//!
//! The same machinery asks, once per boot, for the passphrase of sealed key
//! files ([`Prompt::ask_passphrase`]) when a locked volume needs a key no
//! plain key file gave; characters show as `*`.
//!
//! Not a line editor or a terminal library: raw mode on the consoles, one
//! byte at a time, restored afterwards.

use crate::bitlocker::keys::{check_group, GroupCheck};
use crate::bitlocker::{Metadata, ProtectorKind, RecoveryPassword};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// The prompt's state across tries on one boot.
pub struct Prompt {
    consoles: Vec<PathBuf>,
    /// Give up after this long without a keystroke.
    pub idle: Duration,
    /// Tries for the current volume (a wrong key asks again).
    tries: u32,
    volume: String,
}

impl Prompt {
    pub fn new(consoles: Vec<PathBuf>, idle: Duration) -> Prompt {
        Prompt {
            consoles,
            idle,
            tries: 0,
            volume: String::new(),
        }
    }

    /// Asks for the recovery password of `dev`. `None` when the person
    /// skipped, nobody typed within the bound, or after five wrong keys.
    pub fn ask(&mut self, dev: &str, meta: &Metadata) -> Option<RecoveryPassword> {
        if self.idle.is_zero() {
            return None;
        }
        if self.volume != dev {
            self.volume = dev.to_string();
            self.tries = 0;
        }
        self.tries += 1;
        if self.tries > 5 {
            return None;
        }
        let mut ttys: Vec<Tty> = self.consoles.iter().filter_map(Tty::open).collect();
        if ttys.is_empty() {
            return None;
        }
        let ids: Vec<String> = meta
            .vmks()
            .filter(|v| v.kind == ProtectorKind::RecoveryPassword)
            .map(|v| format!("{} ({})", v.guid.short_id(), v.guid.windows_form()))
            .collect();
        let say = |ttys: &mut Vec<Tty>, s: &str| {
            for t in ttys.iter_mut() {
                let _ = t.file.write_all(s.as_bytes());
                let _ = t.file.flush();
            }
        };
        if self.tries > 1 {
            say(
                &mut ttys,
                "\r\nThat key does not open this volume. Check the key ID and try again.\r\n",
            );
        }
        say(
            &mut ttys,
            &format!(
                "\r\nBitLocker: /dev/{dev} is locked. Type its recovery key, key ID {}:\r\n\
                 8 groups of 6 digits (dashes optional); Enter on an empty line skips it.\r\n\
                 Waiting {} s for a keystroke.\r\n> ",
                if ids.is_empty() {
                    "(none listed)".to_string()
                } else {
                    ids.join(", ")
                },
                self.idle.as_secs()
            ),
        );
        let mut digits = Zeroizing::new(String::new());
        let mut last = Instant::now();
        loop {
            if last.elapsed() >= self.idle {
                say(
                    &mut ttys,
                    "\r\nno key typed; going on without this volume\r\n",
                );
                return None;
            }
            let Some(b) = read_byte(&mut ttys, self.idle.saturating_sub(last.elapsed())) else {
                continue;
            };
            last = Instant::now();
            match b {
                b'0'..=b'9' => {
                    digits.push(b as char);
                    say(&mut ttys, "*");
                    let group = digits.len().div_ceil(6);
                    let start = (group - 1) * 6;
                    match check_group(&digits[start..]) {
                        GroupCheck::Incomplete => {}
                        GroupCheck::Valid => {
                            if digits.len() == 48 {
                                say(&mut ttys, "\r\nchecking the key...\r\n");
                                return RecoveryPassword::parse(&digits).ok();
                            }
                            say(
                                &mut ttys,
                                if group.is_multiple_of(4) {
                                    "\r\n> "
                                } else {
                                    "-"
                                },
                            );
                        }
                        _ => {
                            digits.truncate(start);
                            say(
                                &mut ttys,
                                &format!("\r\ngroup {group} is not a valid group (each is divisible by 11); type it again\r\n> "),
                            );
                        }
                    }
                }
                0x7f | 0x08 if digits.pop().is_some() => say(&mut ttys, "\x08 \x08"),
                b'\r' | b'\n' if digits.is_empty() => {
                    say(&mut ttys, "\r\nskipped\r\n");
                    return None;
                }
                _ => {}
            }
        }
    }
}

/// Writes one line to every console now (a sealed file that did not open,
/// before the next prompt asks for something else).
pub fn tell(consoles: &[PathBuf], line: &str) {
    for c in consoles {
        if let Ok(mut f) = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(c)
        {
            let _ = f.write_all(format!("\r\n{line}\r\n").as_bytes());
        }
    }
}

/// The longest passphrase taken (bytes); more is ignored.
const MAX_PASSPHRASE: usize = 1024;

impl Prompt {
    /// Asks once for the passphrase of the sealed key files `files`, because
    /// `dev` needs a key no plain key file gave. `notice` is shown first
    /// (e.g. that the last passphrase opened nothing). Every character
    /// shows as `*`; Backspace takes one back, Ctrl-U clears the line;
    /// Enter on an empty line skips; no keystroke within the bound gives
    /// up. The typed text is wiped when the caller drops it.
    pub fn ask_passphrase(
        &mut self,
        dev: &str,
        files: &[String],
        notice: Option<&str>,
    ) -> crate::volumes::Passphrase {
        use crate::volumes::Passphrase;
        if self.idle.is_zero() {
            return Passphrase::TimedOut;
        }
        let mut ttys: Vec<Tty> = self.consoles.iter().filter_map(Tty::open).collect();
        if ttys.is_empty() {
            return Passphrase::TimedOut;
        }
        let say = |ttys: &mut Vec<Tty>, s: &str| {
            for t in ttys.iter_mut() {
                let _ = t.file.write_all(s.as_bytes());
                let _ = t.file.flush();
            }
        };
        if let Some(n) = notice {
            say(&mut ttys, &format!("\r\n{n}\r\n"));
        }
        say(
            &mut ttys,
            &format!(
                "\r\nBitLocker: /dev/{dev} is locked and no plain key file opens it.\r\n\
                 Sealed key files on the stick: {}\r\n\
                 Type their passphrase (shown as *); Enter on an empty line skips them.\r\n\
                 Waiting {} s for a keystroke.\r\npassphrase> ",
                files.join(", "),
                self.idle.as_secs()
            ),
        );
        let mut typed = Zeroizing::new(Vec::<u8>::with_capacity(MAX_PASSPHRASE));
        let mut last = Instant::now();
        loop {
            if last.elapsed() >= self.idle {
                say(
                    &mut ttys,
                    "\r\nno passphrase typed; going on without the sealed key files\r\n",
                );
                return Passphrase::TimedOut;
            }
            let Some(b) = read_byte(&mut ttys, self.idle.saturating_sub(last.elapsed())) else {
                continue;
            };
            last = Instant::now();
            match b {
                b'\r' | b'\n' if typed.is_empty() => {
                    say(&mut ttys, "\r\nskipped\r\n");
                    return Passphrase::Skipped;
                }
                b'\r' | b'\n' => {
                    say(&mut ttys, "\r\nopening the sealed key files...\r\n");
                    // Invalid UTF-8 (a console in another encoding) is kept
                    // as typed, lossily: the same keys give the same text.
                    let text = Zeroizing::new(String::from_utf8_lossy(&typed).into_owned());
                    return Passphrase::Typed(text);
                }
                0x7f | 0x08 => {
                    // One character back: its UTF-8 continuation bytes too.
                    let mut removed = false;
                    while let Some(c) = typed.pop() {
                        removed = true;
                        if c & 0xc0 != 0x80 {
                            break;
                        }
                    }
                    if removed {
                        say(&mut ttys, "\x08 \x08");
                    }
                }
                0x15 => {
                    let shown = typed.iter().filter(|&&c| c & 0xc0 != 0x80).count();
                    typed.clear();
                    say(&mut ttys, &"\x08 \x08".repeat(shown));
                }
                b if b >= 0x20 && typed.len() < MAX_PASSPHRASE => {
                    typed.push(b);
                    if b & 0xc0 != 0x80 {
                        say(&mut ttys, "*");
                    }
                }
                _ => {}
            }
        }
    }
}

/// One console in raw mode, put back as it was on drop.
struct Tty {
    file: File,
    saved: Option<rustix::termios::Termios>,
}

impl Tty {
    fn open(p: &PathBuf) -> Option<Tty> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(p)
            .ok()?;
        let saved = rustix::termios::tcgetattr(file.as_fd()).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            raw.local_modes -=
                rustix::termios::LocalModes::ICANON | rustix::termios::LocalModes::ECHO;
            let _ = rustix::termios::tcsetattr(
                file.as_fd(),
                rustix::termios::OptionalActions::Now,
                &raw,
            );
        }
        Some(Tty { file, saved })
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = rustix::termios::tcsetattr(
                self.file.as_fd(),
                rustix::termios::OptionalActions::Now,
                t,
            );
        }
    }
}

/// The next byte from any console, waiting at most `wait`.
fn read_byte(ttys: &mut [Tty], wait: Duration) -> Option<u8> {
    let mut fds: Vec<rustix::event::PollFd> = ttys
        .iter()
        .map(|t| rustix::event::PollFd::new(&t.file, rustix::event::PollFlags::IN))
        .collect();
    let ms = wait.as_millis().min(1000) as i32;
    let ts = rustix::event::Timespec {
        tv_sec: i64::from(ms / 1000),
        tv_nsec: i64::from(ms % 1000) * 1_000_000,
    };
    let n = rustix::event::poll(&mut fds, Some(&ts)).ok()?;
    if n == 0 {
        return None;
    }
    let ready: Vec<bool> = fds
        .iter()
        .map(|f| f.revents().contains(rustix::event::PollFlags::IN))
        .collect();
    drop(fds);
    for (t, r) in ttys.iter_mut().zip(ready) {
        if r {
            let mut b = [0u8; 1];
            if let Ok(1) = t.file.read(&mut b) {
                return Some(b[0]);
            }
        }
    }
    None
}
