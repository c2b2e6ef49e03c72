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
//! On a volume with a password protector (data and To Go volumes) the
//! same line takes the volume's password: anything that is not a recovery
//! key, ended with Enter, is tried as the password ([`Entry`]).
//!
//! The same machinery asks, once per boot, for the passphrase of sealed key
//! files ([`Prompt::ask_passphrase`]) when a locked volume needs a key no
//! plain key file gave; characters show as `*`.
//!
//! Not a line editor or a terminal library: raw mode on the consoles, one
//! byte at a time, restored afterwards.

use crate::bitlocker::keys::{check_group, GroupCheck};
use crate::bitlocker::{Metadata, ProtectorKind, RecoveryPassword};
use crate::volumes::Typed;
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

    /// Asks for the recovery password of `dev` — or its password, when
    /// the volume has a password protector. `None` when the person
    /// skipped, nobody typed within the bound, or after five wrong keys.
    pub fn ask(&mut self, dev: &str, meta: &Metadata) -> Option<Typed> {
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
        let password = meta.vmks().any(|v| v.kind == ProtectorKind::Password);
        let say = |ttys: &mut Vec<Tty>, s: &str| {
            for t in ttys.iter_mut() {
                let _ = t.file.write_all(s.as_bytes());
                let _ = t.file.flush();
            }
        };
        if self.tries > 1 {
            say(
                &mut ttys,
                if password {
                    "\r\nThat key or password does not open this volume. Check the key ID and try again.\r\n"
                } else {
                    "\r\nThat key does not open this volume. Check the key ID and try again.\r\n"
                },
            );
        }
        let ids = if ids.is_empty() {
            "(none listed)".to_string()
        } else {
            ids.join(", ")
        };
        let banner = if password {
            format!(
                "\r\nBitLocker: /dev/{dev} is locked. Type its recovery key, key ID {ids},\r\n\
                 or its password: 8 groups of 6 digits (dashes optional), or the password\r\n\
                 and Enter; Enter on an empty line skips it.\r\n\
                 Waiting {} s for a keystroke.\r\n> ",
                self.idle.as_secs()
            )
        } else {
            format!(
                "\r\nBitLocker: /dev/{dev} is locked. Type its recovery key, key ID {ids}:\r\n\
                 8 groups of 6 digits (dashes optional); Enter on an empty line skips it.\r\n\
                 Waiting {} s for a keystroke.\r\n> ",
                self.idle.as_secs()
            )
        };
        say(&mut ttys, &banner);
        let mut entry = Entry::new(password);
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
            let (echo, done) = entry.feed(b);
            say(&mut ttys, &echo);
            match done {
                None => {}
                Some(Done::Skipped) => return None,
                Some(Done::Typed(t)) => return Some(t),
            }
        }
    }
}

/// How a recovery-key entry ended.
pub(crate) enum Done {
    Typed(Typed),
    Skipped,
}

/// The recovery-key line as a state machine over keystrokes (no console:
/// unit-tested on bytes). Digits are checked a group at a time; a group
/// that fails the check is taken back, as Windows' recovery screen does.
/// On a volume with a password protector anything printable may be typed
/// too: the whole line, exactly as typed, is then the password (a person
/// typing a numeric password sees the group hint and goes on).
pub(crate) struct Entry {
    password: bool,
    /// The recovery key's digits so far (failed groups taken back).
    digits: Zeroizing<String>,
    /// Every character typed (password volumes only).
    raw: Zeroizing<Vec<u8>>,
    /// A letter was typed where only digits count (said once).
    hinted: bool,
}

impl Entry {
    pub(crate) fn new(password: bool) -> Entry {
        Entry {
            password,
            digits: Zeroizing::new(String::new()),
            raw: Zeroizing::new(Vec::new()),
            hinted: false,
        }
    }

    /// Whether everything typed so far could still be a recovery key.
    fn key_like(&self) -> bool {
        self.raw
            .iter()
            .all(|&c| c.is_ascii_digit() || c == b'-' || c == b' ')
    }

    /// One keystroke: what to show, and whether the entry is finished.
    pub(crate) fn feed(&mut self, b: u8) -> (String, Option<Done>) {
        let mut echo = String::new();
        match b {
            b'\r' | b'\n' if self.digits.is_empty() && self.raw.is_empty() => {
                echo.push_str("\r\nskipped\r\n");
                return (echo, Some(Done::Skipped));
            }
            b'\r' | b'\n' if self.password => {
                echo.push_str("\r\nchecking the password...\r\n");
                let text = Zeroizing::new(String::from_utf8_lossy(&self.raw).into_owned());
                return (echo, Some(Done::Typed(Typed::Password(text))));
            }
            0x7f | 0x08 => {
                let mut removed = self.digits.pop().is_some();
                while let Some(c) = self.raw.pop() {
                    removed = true;
                    if c & 0xc0 != 0x80 {
                        break;
                    }
                }
                if removed {
                    echo.push_str("\x08 \x08");
                }
            }
            0x15 if self.password => {
                let shown = self.raw.iter().filter(|&&c| c & 0xc0 != 0x80).count();
                self.raw.clear();
                self.digits.clear();
                echo.push_str(&"\x08 \x08".repeat(shown));
            }
            b'0'..=b'9' => {
                if self.password && self.raw.len() < MAX_PASSPHRASE {
                    self.raw.push(b);
                }
                echo.push('*');
                if !self.key_like() {
                    return (echo, None);
                }
                self.digits.push(b as char);
                let group = self.digits.len().div_ceil(6);
                let start = (group - 1) * 6;
                match check_group(&self.digits[start..]) {
                    GroupCheck::Incomplete => {}
                    GroupCheck::Valid if self.digits.len() == 48 => {
                        echo.push_str("\r\nchecking the key...\r\n");
                        if let Ok(rp) = RecoveryPassword::parse(&self.digits) {
                            return (echo, Some(Done::Typed(Typed::RecoveryPassword(rp))));
                        }
                    }
                    GroupCheck::Valid => {
                        echo.push_str(if group.is_multiple_of(4) {
                            "\r\n> "
                        } else {
                            "-"
                        });
                    }
                    _ => {
                        self.digits.truncate(start);
                        echo.push_str(&format!(
                            "\r\ngroup {group} is not a valid group (each is divisible by 11); type it again{}\r\n> ",
                            if self.password {
                                " (typing the password instead? go on, then Enter)"
                            } else {
                                ""
                            }
                        ));
                    }
                }
            }
            b if self.password && b >= 0x20 && b != 0x7f && self.raw.len() < MAX_PASSPHRASE => {
                self.raw.push(b);
                if b & 0xc0 != 0x80 {
                    echo.push('*');
                }
            }
            b if !self.password && b.is_ascii_alphabetic() && !self.hinted => {
                self.hinted = true;
                echo.push_str(
                    "\r\n(only digits: this volume has no password protector; type its 48-digit recovery key)\r\n> ",
                );
            }
            _ => {}
        }
        (echo, None)
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

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "042647-302313-590458-071500-554323-116567-412181-516978";

    fn type_all(e: &mut Entry, text: &str) -> (String, Option<Done>) {
        let mut shown = String::new();
        for b in text.bytes() {
            let (echo, done) = e.feed(b);
            shown.push_str(&echo);
            if done.is_some() {
                return (shown, done);
            }
        }
        (shown, None)
    }

    fn digits_of(t: &Typed) -> String {
        match t {
            Typed::RecoveryPassword(rp) => rp.digits().replace('-', ""),
            Typed::Password(_) => panic!("typed as a password"),
        }
    }

    #[test]
    fn a_recovery_key_finishes_at_its_48th_digit_and_never_echoes() {
        for password in [false, true] {
            let mut e = Entry::new(password);
            let (shown, done) = type_all(&mut e, KEY);
            let Some(Done::Typed(t)) = done else {
                panic!("not finished")
            };
            assert_eq!(digits_of(&t), KEY.replace('-', ""));
            assert!(!shown.bytes().any(|c| c.is_ascii_digit()), "{shown}");
            assert!(shown.contains("checking the key"));
        }
    }

    #[test]
    fn a_bad_group_is_taken_back_and_typed_again() {
        for password in [false, true] {
            let g: Vec<&str> = KEY.split('-').collect();
            let typed = format!("{}-{}-333334{}", g[0], g[1], g[2..].join("-"));
            let mut e = Entry::new(password);
            let (shown, done) = type_all(&mut e, &typed);
            assert!(shown.contains("group 3 is not a valid group"), "{shown}");
            let Some(Done::Typed(t)) = done else {
                panic!("not finished")
            };
            assert_eq!(digits_of(&t), KEY.replace('-', ""));
        }
    }

    #[test]
    fn a_password_is_the_whole_line_as_typed() {
        let mut e = Entry::new(true);
        // A letter, a correction, spaces and a dash are all the password's.
        let (shown, done) = type_all(&mut e, "anacx\x7fonda - 1\r");
        let Some(Done::Typed(Typed::Password(p))) = done else {
            panic!("not a password")
        };
        assert_eq!(p.as_str(), "anaconda - 1");
        assert!(!shown.contains("anaconda"));
        assert!(shown.contains("checking the password"));
    }

    #[test]
    fn a_numeric_password_survives_the_group_hint() {
        let mut e = Entry::new(true);
        let (shown, done) = type_all(&mut e, "12345678\r");
        assert!(shown.contains("typing the password instead"), "{shown}");
        let Some(Done::Typed(Typed::Password(p))) = done else {
            panic!("not a password")
        };
        assert_eq!(p.as_str(), "12345678");
    }

    #[test]
    fn without_a_password_protector_only_digits_count() {
        let mut e = Entry::new(false);
        let (shown, done) = type_all(&mut e, "anaconda");
        assert!(done.is_none());
        assert_eq!(shown.matches("only digits").count(), 1, "{shown}");
        let (_, done) = type_all(&mut e, KEY);
        assert!(matches!(
            done,
            Some(Done::Typed(Typed::RecoveryPassword(_)))
        ));
    }

    #[test]
    fn enter_on_an_empty_line_skips_and_ctrl_u_clears() {
        for password in [false, true] {
            let mut e = Entry::new(password);
            assert!(matches!(e.feed(b'\r').1, Some(Done::Skipped)));
        }
        let mut e = Entry::new(true);
        type_all(&mut e, "secret");
        let (shown, _) = e.feed(0x15);
        assert_eq!(shown, "\x08 \x08".repeat(6));
        assert!(matches!(e.feed(b'\r').1, Some(Done::Skipped)));
    }
}
