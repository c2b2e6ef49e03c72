//! The .deb as an admin meets it: `apt install ./defib_*.deb` into a clean
//! Debian root (debootstrap, from Debian's packages), then `defib build`
//! run there by an ordinary user on the cached boot parts — no source tree,
//! no root — gives an image byte for byte equal to the one scripts/build
//! made from the source tree. And lintian finds no error in the package.

mod common;

use common::debian_root::{run, sha256_file, tool};
use common::{debian_root, env_file};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Unmounts what the test mounted in the root, whatever happens.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A clean Debian trixie minbase root (debootstrap, cached as a tarball).
fn clean_root(into: &Path) {
    debian_root::unpack(into);
}

fn chroot(root: &Path) -> Command {
    chroot_as(root, None)
}

/// `chroot [--userspec=USER:USER] ROOT …` with a clean environment.
fn chroot_as(root: &Path, user: Option<&str>) -> Command {
    let mut c = Command::new(tool("chroot", "coreutils"));
    if let Some(u) = user {
        c.arg(format!("--userspec={u}:{u}"));
    }
    c.arg(root)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LANG", "C.UTF-8");
    c
}

#[test]
#[ignore = "installs into a debootstrap root as root: run through scripts/test"]
fn deb_installs_in_a_clean_debian_and_an_ordinary_user_builds_the_same_image() {
    let deb = env_file("DEFIB_DEB");
    let image = env_file("DEFIB_IMAGE");
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .expect("SOURCE_DATE_EPOCH: scripts/test exports the one scripts/build used");
    let debs = defib_builder::fetch::default_debs_dir().unwrap();
    assert!(
        debs.is_dir(),
        "{}: the boot parts scripts/build fetched",
        debs.display()
    );

    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let root = tmp.path().join("root");
    clean_root(&root);
    assert!(
        !root.join("usr/bin/defib").exists(),
        "the clean root already has defib"
    );
    std::fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf")).unwrap();
    run(
        "mounting /proc",
        Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(root.join("proc")),
    );
    let _proc = Mounted(root.join("proc"));
    std::fs::copy(&deb, root.join("tmp/defib.deb")).unwrap();
    // The boot parts as an admin would bring them (`--debs`): a copy, so
    // the cache is not touched by the root.
    std::fs::create_dir_all(root.join("srv/debs")).unwrap();
    for e in std::fs::read_dir(&debs).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().ends_with(".deb") {
            std::fs::copy(e.path(), root.join("srv/debs").join(e.file_name())).unwrap();
        }
    }

    run(
        "apt-get update in the clean root",
        chroot(&root).args(["apt-get", "update", "-q"]),
    );
    run(
        "apt install ./defib.deb in the clean root",
        chroot(&root).args([
            "apt-get",
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "/tmp/defib.deb",
        ]),
    );
    // What the package put where a user looks.
    for f in [
        "usr/bin/defib",
        "usr/bin/rescue",
        "usr/share/defib/payloads/playbooks/mcafee-dat-5958.toml",
        "usr/share/man/man1/defib.1.gz",
        "usr/share/man/man1/defib-build.1.gz",
        "usr/share/man/man1/rescue-fix.1.gz",
        "usr/share/bash-completion/completions/defib",
        "usr/share/doc/defib/copyright",
    ] {
        assert!(root.join(f).is_file(), "the package did not install /{f}");
    }
    let help = run("rescue --help", chroot(&root).args(["rescue", "--help"]));
    assert!(help.contains("scan"), "{help}");

    // An ordinary user, in their home (no payloads folder there: the
    // installed ones are used), building offline from the brought parts.
    run(
        "useradd",
        chroot(&root).args(["useradd", "-m", "-s", "/bin/sh", "tech"]),
    );
    let out = run(
        "defib build as tech",
        chroot_as(&root, Some("tech")).args([
            "/bin/sh",
            "-c",
            &format!(
                "cd /home/tech && HOME=/home/tech SOURCE_DATE_EPOCH={epoch} defib build --debs /srv/debs --offline --out /home/tech/defib.img"
            ),
        ]),
    );
    assert!(out.contains("defib.img"), "{out}");
    let built = root.join("home/tech/defib.img");
    let meta = std::fs::metadata(&built).unwrap();
    {
        use std::os::unix::fs::MetadataExt;
        let uid: u32 = run("id -u tech", chroot(&root).args(["id", "-u", "tech"]))
            .trim()
            .parse()
            .unwrap();
        assert_eq!(meta.uid(), uid, "the image is the user's");
    }
    assert_eq!(
        sha256_file(&built),
        sha256_file(&image),
        "the installed defib, run by an ordinary user, built other bytes than scripts/build"
    );
}

#[test]
#[ignore = "needs the .deb scripts/package wrote: run through scripts/test"]
fn deb_has_no_lintian_errors() {
    let deb = env_file("DEFIB_DEB");
    let o = Command::new(tool("lintian", "lintian"))
        .args(["--no-tag-display-limit", "--fail-on", "error"])
        .arg(&deb)
        .output()
        .expect("lintian (scripts/setup --test installs it)");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "lintian found errors:\n{text}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Every warning lintian gives is one docs/packaging.md explains.
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/packaging.md"))
            .unwrap();
    for line in text.lines().filter(|l| l.starts_with("W: ")) {
        let tag = line.split_whitespace().nth(2).unwrap_or(line);
        assert!(
            doc.contains(tag),
            "lintian warning {tag} is not explained in docs/packaging.md:\n{line}"
        );
    }
}
