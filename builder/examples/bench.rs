//! The figures behind `scripts/bench`: sizes, warm-cache build time, and
//! boot times against a bare-kernel baseline measured in the same run.
//!
//! Boots run under the same QEMU (TCG) one after another so load affects
//! them alike; each boot is repeated and the median printed.

use anyhow::{bail, Context, Result};
use clap::Parser;
use defib_builder::cpio::{compress_zstd, Archive};
use defib_builder::image::UsbImage;
use defib_builder::qemu::{self, Boot, Bus, Firmware};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

// The victim-disk maker the end-to-end tests use (mkntfs + ntfs-3g).
#[allow(dead_code)]
#[path = "../tests/common/victim/mod.rs"]
mod victim;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    image: PathBuf,
    #[arg(long)]
    defib: PathBuf,
    #[arg(long)]
    rescue: PathBuf,
    #[arg(long)]
    bare_init: PathBuf,
    #[arg(long)]
    work: PathBuf,
    /// Repetitions per measurement (median reported)
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Only the lowest-RAM probe
    #[arg(long)]
    ram_only: bool,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Boots and returns the time of the first line containing each marker.
fn timed_boot(b: &Boot, markers: &[&str]) -> Result<Vec<Duration>> {
    let out = qemu::run(b)?;
    markers
        .iter()
        .map(|m| {
            out.first(m)
                .with_context(|| format!("boot never printed {m:?}:\n{}", out.text()))
        })
        .collect()
}

fn main() -> Result<()> {
    let a = Args::parse();
    std::fs::create_dir_all(&a.work)?;
    if a.ram_only {
        return lowest_ram(&a);
    }
    let img = UsbImage::open(&a.image)?;
    let manifest = defib_builder::inspect::inspect(&a.image)?.manifest;
    let size = |p: &str| {
        manifest
            .files
            .iter()
            .find(|f| f.path == p)
            .map(|f| f.size)
            .unwrap_or(0)
    };

    println!("defib benchmark ({} runs each, median)", a.runs);
    println!(
        "  image size                 {:>8.1} MiB",
        std::fs::metadata(&a.image)?.len() as f64 / 1048576.0
    );
    println!(
        "  kernel                     {:>8.1} MiB",
        size("defib/vmlinuz") as f64 / 1048576.0
    );
    println!(
        "  initramfs                  {:>8.1} MiB ({} modules)",
        size("defib/initrd.img") as f64 / 1048576.0,
        manifest.modules.loaded.len()
    );
    println!(
        "  payload segment            {:>8.1} KiB",
        size("defib/payloads.img") as f64 / 1024.0
    );

    // Warm cache: the .debs are already fetched; this is the build itself.
    let mut builds = Vec::new();
    for _ in 0..a.runs {
        let out = a.work.join("bench.img");
        let t = Instant::now();
        let st = Command::new(&a.defib)
            .args(["build", "--offline", "--json", "--out"])
            .arg(&out)
            .arg("--rescue")
            .arg(&a.rescue)
            .stdout(std::process::Stdio::null())
            .status()
            .context("running defib build")?;
        if !st.success() {
            bail!("defib build failed");
        }
        builds.push(t.elapsed());
    }
    println!("  build, warm cache          {:>10}", secs(median(builds)));

    // Direct kernel boots (SeaBIOS, -kernel): the same firmware path for the
    // baseline and for defib, so the difference is initramfs + rescue.
    let kernel = a.work.join("vmlinuz");
    std::fs::write(&kernel, img.read_file("defib/vmlinuz")?)?;
    let initrd = a.work.join("initrd.img");
    std::fs::write(&initrd, img.read_file("defib/initrd.img")?)?;
    // QEMU's -initrd takes one file; the kernel unpacks concatenated
    // segments just as it does when GRUB loads two.
    let mut both = std::fs::read(&initrd)?;
    while both.len() % 4 != 0 {
        both.push(0);
    }
    both.extend(img.read_file("defib/payloads.img")?);
    let initrd_both = a.work.join("initrd-both.img");
    std::fs::write(&initrd_both, both)?;
    let mut bare = Archive::new();
    bare.add_file("init", 0o755, std::fs::read(&a.bare_init)?)?;
    bare.add_dir("dev", 0o755)?;
    let mut cpio = Vec::new();
    bare.write_newc(&mut cpio, 0)?;
    let bare_rd = a.work.join("bare.img");
    std::fs::write(&bare_rd, compress_zstd(&cpio, 12)?)?;
    let cmd = "console=ttyS0,115200 quiet panic=10";

    let direct = |initrds: Vec<PathBuf>, append: String| {
        let mut b = Boot::new(Firmware::Bios, &a.work);
        b.kernel = Some((kernel.clone(), initrds, append));
        b.timeout = Duration::from_secs(180);
        b
    };
    let mut t_bare = Vec::new();
    let mut t_first = Vec::new();
    let mut t_rescue = Vec::new();
    let mut t_verdict = Vec::new();
    for i in 0..a.runs {
        let b = direct(vec![bare_rd.clone()], cmd.to_string());
        t_bare.push(timed_boot(&b, &["bare init up"])?[0]);
        // The same kernel and initramfs repairing the McAfee victim, with
        // the stick attached for the report (as on a real PC).
        let vdir = a.work.join(format!("victim{i}"));
        std::fs::create_dir_all(&vdir)?;
        let v = victim::make_xp_mcafee(&vdir, victim::McafeeSvchost::InDllcache)?;
        let stick = a.work.join("direct-stick.img");
        std::fs::copy(&a.image, &stick)?;
        let mut b = direct(
            vec![initrd_both.clone()],
            format!("{cmd} defib.mode=auto defib.after=poweroff"),
        );
        b.stick = Some(stick);
        b.disks = vec![(v.disk.clone(), Bus::Ahci)];
        let t = timed_boot(&b, &["defib rescue", "defib: verdict repaired"])?;
        t_first.push(t[0]);
        t_rescue.push(t[1] - t[0]);
        t_verdict.push(t[1]);
        std::fs::remove_dir_all(&vdir).ok();
    }
    let (bare, first, verdict) = (median(t_bare), median(t_first), median(t_verdict));
    println!("  direct kernel boot (SeaBIOS -kernel), McAfee XP victim on AHCI:");
    println!(
        "    bare kernel + trivial init {:>8}  (to its first line)",
        secs(bare)
    );
    println!(
        "    defib, to first line       {:>8}  ratio {:.2}",
        secs(first),
        first.as_secs_f64() / bare.as_secs_f64()
    );
    println!(
        "    rescue start to verdict    {:>8}  (modules, devices, repair, report)",
        secs(median(t_rescue))
    );
    println!(
        "    defib, boot to REPAIRED    {:>8}  ratio {:.2}",
        secs(verdict),
        verdict.as_secs_f64() / bare.as_secs_f64()
    );

    // The real path: OVMF with Secure Boot enforcing -> shim -> GRUB
    // (5 s menu) -> kernel -> rescue, from the USB stick, McAfee victim.
    let mut sb_first = Vec::new();
    let mut sb_verdict = Vec::new();
    for i in 0..a.runs {
        let stick = a.work.join("stick.img");
        std::fs::copy(&a.image, &stick)?;
        let vdir = a.work.join(format!("sbvictim{i}"));
        std::fs::create_dir_all(&vdir)?;
        let v = victim::make_xp_mcafee(&vdir, victim::McafeeSvchost::InDllcache)?;
        let mut b = Boot::new(Firmware::UefiSb, &a.work);
        b.stick = Some(stick);
        b.disks = vec![(v.disk.clone(), Bus::Ahci)];
        b.stop_on = Some("defib: verdict".into());
        b.timeout = Duration::from_secs(300);
        let t = timed_boot(&b, &["defib rescue", "defib: verdict repaired"])?;
        sb_first.push(t[0]);
        sb_verdict.push(t[1]);
        std::fs::remove_dir_all(&vdir).ok();
    }
    println!("  USB stick, OVMF Secure Boot, McAfee XP victim:");
    println!(
        "    to rescue's first line     {:>8}  (includes the 5 s GRUB menu)",
        secs(median(sb_first))
    );
    println!(
        "    to REPAIRED                {:>8}",
        secs(median(sb_verdict))
    );

    lowest_ram(&a)
}

/// The lowest RAM that still repairs, on the real path (OVMF Secure Boot,
/// GRUB loading both initramfs segments, the McAfee victim): downwards
/// until a boot does not reach REPAIRED. One boot per size.
fn lowest_ram(a: &Args) -> Result<()> {
    let mut lowest = None;
    let mut failed = None;
    for mib in [256u32, 224, 192, 160, 128, 112, 96, 80, 64] {
        let stick = a.work.join("ram-stick.img");
        std::fs::copy(&a.image, &stick)?;
        let vdir = a.work.join(format!("ram{mib}"));
        std::fs::create_dir_all(&vdir)?;
        let v = victim::make_xp_mcafee(&vdir, victim::McafeeSvchost::InDllcache)?;
        let mut b = Boot::new(Firmware::UefiSb, &a.work);
        b.stick = Some(stick);
        b.disks = vec![(v.disk.clone(), Bus::Ahci)];
        b.memory_mib = mib;
        b.stop_on = Some("defib: verdict".into());
        b.timeout = Duration::from_secs(300);
        let out = qemu::run(&b)?;
        std::fs::remove_dir_all(&vdir).ok();
        if out.contains("defib: verdict repaired") {
            lowest = Some(mib);
        } else {
            // The first line that says what went wrong (at 192 MiB the
            // kernel's EFI stub: "Failed to decompress kernel"), else the
            // last lines.
            let why = out
                .lines
                .iter()
                .find(|(_, l)| {
                    ["ERROR", "error:", "Kernel panic", "Out of memory"]
                        .iter()
                        .any(|k| l.contains(k))
                })
                .map(|(_, l)| l.clone())
                .unwrap_or_else(|| {
                    let tail: Vec<String> = out
                        .lines
                        .iter()
                        .rev()
                        .take(3)
                        .rev()
                        .map(|(_, l)| l.clone())
                        .collect();
                    tail.join(" | ")
                });
            failed = Some((mib, why));
            break;
        }
    }
    match lowest {
        Some(m) => {
            println!("  lowest RAM that repairs    {m:>6} MiB  (OVMF Secure Boot, USB stick)")
        }
        None => println!("  lowest RAM that repairs    none of 256 MiB and below"),
    }
    if let Some((m, why)) = failed {
        println!("    {m} MiB did not: {why}");
    }
    Ok(())
}
