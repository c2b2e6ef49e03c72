//! A clean Debian trixie minbase root for the install tests (the .deb,
//! the Containerfile): made once with debootstrap from Debian's packages
//! and kept as a tarball in defib's cache — a fresh debootstrap is what is
//! cached, nothing is ever installed into it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `c`, panicking with its output when it fails; returns stdout.
pub fn run(what: &str, c: &mut Command) -> String {
    let o = c
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        o.status.success(),
        "{what}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `name` in the usual system folders, or a panic naming its package.
pub fn tool(name: &str, package: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} is missing: install {package} (scripts/setup --test does)");
}

/// The tarball of a fresh `debootstrap --variant=minbase trixie`.
pub fn tarball() -> PathBuf {
    let cache = defib_builder::fetch::cache_dir()
        .unwrap()
        .join("test-roots");
    std::fs::create_dir_all(&cache).unwrap();
    let tarball = cache.join("trixie-minbase.tar");
    if tarball.is_file() {
        return tarball;
    }
    let mirror = defib_builder::fetch::sources_from_host(Path::new("/etc/apt"))
        .ok()
        .and_then(|s| {
            s.into_iter()
                .map(|s| s.uri)
                .find(|u| !u.contains("security"))
        })
        .unwrap_or_else(|| "http://deb.debian.org/debian".into());
    let fresh = cache.join("trixie-minbase.tmp");
    let _ = std::fs::remove_dir_all(&fresh);
    run(
        "debootstrap",
        Command::new(tool("debootstrap", "debootstrap"))
            .args(["--variant=minbase", "trixie"])
            .arg(&fresh)
            .arg(&mirror),
    );
    let part = cache.join("trixie-minbase.tar.part");
    run(
        "packing the fresh root",
        Command::new("tar")
            .arg("-C")
            .arg(&fresh)
            .arg("-cf")
            .arg(&part)
            .arg("."),
    );
    std::fs::rename(&part, &tarball).unwrap();
    let _ = std::fs::remove_dir_all(&fresh);
    tarball
}

/// The clean root unpacked into `into`.
pub fn unpack(into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    run(
        "unpacking the clean root",
        Command::new("tar")
            .arg("-C")
            .arg(into)
            .arg("-xpf")
            .arg(tarball()),
    );
}

/// SHA-256 of a file, hex.
pub fn sha256_file(p: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(p).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}
