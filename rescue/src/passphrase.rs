//! A passphrase on a host (the `defib keys` commands, `rescue --device`):
//! typed at the controlling terminal with echo off, or the first line of a
//! file for scripts. PID 1 has its own console prompt (`pid1::keyprompt`).
//!
//! What is read is wiped on drop and never printed.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use zeroize::Zeroizing;

/// Longest passphrase file read (a passphrase is a line, not a file).
const MAX_FILE: u64 = 64 << 10;

/// The first line of `path`, without its line ending.
pub fn from_file(path: &Path) -> Result<Zeroizing<String>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Zeroizing::new(Vec::new());
    f.take(MAX_FILE)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    first_line(&bytes).with_context(|| format!("passphrase file {}", path.display()))
}

fn first_line(bytes: &[u8]) -> Result<Zeroizing<String>> {
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(text) = std::str::from_utf8(line) else {
        bail!("the first line is not UTF-8 text");
    };
    if text.is_empty() {
        bail!("the first line is empty: write the passphrase on it");
    }
    Ok(Zeroizing::new(text.to_string()))
}

/// Asks on the controlling terminal (`/dev/tty`) with echo off; the line
/// typed, without its ending.
pub fn from_tty(prompt: &str) -> Result<Zeroizing<String>> {
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("no terminal to ask the passphrase on: give --passphrase-file FILE")?;
    let saved = rustix::termios::tcgetattr(tty.as_fd())
        .context("/dev/tty is not a terminal: give --passphrase-file FILE")?;
    let mut quiet = saved.clone();
    quiet.local_modes -= rustix::termios::LocalModes::ECHO;
    quiet.local_modes |= rustix::termios::LocalModes::ICANON;
    rustix::termios::tcsetattr(tty.as_fd(), rustix::termios::OptionalActions::Flush, &quiet)
        .context("turning echo off on /dev/tty")?;
    let result = (|| -> Result<Zeroizing<String>> {
        tty.write_all(prompt.as_bytes())?;
        tty.flush()?;
        let mut line = Zeroizing::new(Vec::with_capacity(256));
        let mut b = [0u8; 1];
        loop {
            match tty.read(&mut b)? {
                0 => break,
                _ if b[0] == b'\n' => break,
                _ if line.len() < 4096 => line.push(b[0]),
                _ => {}
            }
        }
        if line.is_empty() {
            bail!("no passphrase typed");
        }
        first_line(&line)
    })();
    let _ = rustix::termios::tcsetattr(tty.as_fd(), rustix::termios::OptionalActions::Now, &saved);
    let _ = tty.write_all(b"\n");
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passphrase_file_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pass");
        std::fs::write(&p, "two words\r\nsecond line\n").unwrap();
        assert_eq!(from_file(&p).unwrap().as_str(), "two words");
        std::fs::write(&p, "no newline").unwrap();
        assert_eq!(from_file(&p).unwrap().as_str(), "no newline");
        std::fs::write(&p, "\nlater").unwrap();
        let e = from_file(&p).unwrap_err();
        assert!(format!("{e:#}").contains("first line is empty"), "{e:#}");
        assert!(from_file(&dir.path().join("missing")).is_err());
    }
}
