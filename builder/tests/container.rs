//! The Containerfile as a pipeline uses it: built with podman from the
//! .deb on a Debian trixie base, then `defib build` run inside by the
//! container's ordinary user, the boot parts mounted read-only, no
//! network — and the image's bytes equal the ones scripts/build made.
//!
//! No registry but Debian's is reachable here, so `debian:trixie` is the
//! clean debootstrap root the package test uses, imported and tagged
//! locally (`--pull=never`). podman runs with runc and cgroupfs, which work
//! on hosts whose cgroups are in hybrid mode (crun refuses those).

mod common;

use common::debian_root::{self, run, sha256_file, tool};
use common::env_file;
use std::path::Path;
use std::process::Command;

const BASE: &str = "docker.io/library/debian:trixie";
const IMAGE: &str = "localhost/defib-container-test:latest";

fn podman() -> Command {
    let mut c = Command::new(tool("podman", "podman"));
    c.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
    c
}

/// Removes the test's images, whatever happens (the base stays cached as
/// the debootstrap tarball, not as an image).
struct Images;

impl Drop for Images {
    fn drop(&mut self) {
        for i in [IMAGE, BASE] {
            let _ = podman().args(["rmi", "--force", i]).output();
        }
    }
}

#[test]
#[ignore = "builds and runs a container with podman: run through scripts/test"]
fn containerfile_builds_an_image_equal_to_scripts_build() {
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
    tool("runc", "runc");
    let _images = Images;

    // The base: a fresh debootstrap, as `debian:trixie`.
    run(
        "podman import",
        podman().arg("import").arg(debian_root::tarball()).arg(BASE),
    );

    // The build context a pipeline has: the Containerfile and out/*.deb.
    let ctx = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::create_dir_all(ctx.path().join("out")).unwrap();
    std::fs::copy(&deb, ctx.path().join("out").join(deb.file_name().unwrap())).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../Containerfile"),
        ctx.path().join("Containerfile"),
    )
    .unwrap();
    run(
        "podman build",
        podman()
            .args([
                "build",
                "--pull=never",
                "--network=host",
                "--ulimit",
                "nofile=20000:20000",
            ])
            .args(["-t", IMAGE, "-f"])
            .arg(ctx.path().join("Containerfile"))
            .arg(ctx.path()),
    );

    // The pipeline's folder, writable by the container's user (uid 1000).
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    run(
        "chown",
        Command::new("chown").arg("1000:1000").arg(work.path()),
    );
    let out = run(
        "defib build in the container",
        podman()
            .args([
                "run",
                "--rm",
                "--network=none",
                "--ulimit",
                "nofile=20000:20000",
            ])
            .args(["--ulimit", "nproc=4096:4096"])
            .arg("-e")
            .arg(format!("SOURCE_DATE_EPOCH={epoch}"))
            .arg("-v")
            .arg(format!("{}:/debs:ro", debs.display()))
            .arg("-v")
            .arg(format!("{}:/work", work.path().display()))
            .arg(IMAGE)
            .args([
                "build",
                "--debs",
                "/debs",
                "--offline",
                "--out",
                "/work/defib.img",
            ]),
    );
    assert!(out.contains("defib.img"), "{out}");
    let built = work.path().join("defib.img");
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(&built).unwrap().uid(),
            1000,
            "written by the container's user, not root"
        );
    }
    assert_eq!(
        sha256_file(&built),
        sha256_file(&image),
        "the container built other bytes than scripts/build"
    );
    // The entry point is defib itself: its man pages and completions came
    // with the package.
    let help = run(
        "defib --version in the container",
        podman()
            .args([
                "run",
                "--rm",
                "--network=none",
                "--ulimit",
                "nofile=20000:20000",
            ])
            .args(["--ulimit", "nproc=4096:4096", IMAGE, "--version"]),
    );
    assert!(help.starts_with("defib "), "{help}");
}
