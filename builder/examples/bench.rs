//! The figures behind `scripts/bench`: sizes, warm-cache build time, and
//! boot times against a bare-kernel baseline measured in the same run;
//! then nginx as `defib serve` configures it under N clients at once
//! (bench/serve_load.rs).
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
// Synthetic store objects, as tests/store_medium.rs makes them.
#[allow(dead_code)]
#[path = "../tests/common/bigstore.rs"]
mod bigstore;
// The load test of `defib serve`'s nginx, in network namespaces.
#[path = "bench/serve_load.rs"]
mod serve_load;

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
    /// Only the BitLocker figures (unlock per volume, repair on an
    /// unlocked volume against an unencrypted one)
    #[arg(long)]
    bitlocker_only: bool,
    /// Store sizes in MiB to build with (and boot the largest in 256 MiB)
    #[arg(long, value_delimiter = ',', default_value = "0,100,400")]
    store_mib: Vec<usize>,
    /// Only the lowest-RAM probe
    #[arg(long)]
    ram_only: bool,
    /// Only the boot figures: bare kernel against defib to its verdict,
    /// modules loaded against carried, the rescue's steps, the OVMF
    /// Secure Boot USB path, and the lowest RAM
    #[arg(long)]
    boot_only: bool,
    /// Only the direct kernel boots: bare kernel against defib to its
    /// verdict, with the rescue's modules and steps (the quick loop while
    /// working on boot time)
    #[arg(long)]
    direct_only: bool,
    /// Other images to boot directly in the same run, each boot right
    /// after the first image's: a before/after comparison under the same
    /// machine load
    #[arg(long)]
    against: Vec<PathBuf>,
    /// Only the load test of nginx as `defib serve` configures it (in a
    /// network namespace; N clients at once in another)
    #[arg(long)]
    serve_only: bool,
    /// Clients at once, per round of the nginx load test
    #[arg(long, value_delimiter = ',', default_value = "100,500,1000")]
    serve_clients: Vec<usize>,
    /// Internal: the load test's half inside the server's namespace; the
    /// value is the clients' namespace
    #[arg(long, hide = true)]
    serve_inner: Option<String>,
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
    if let Some(client_ns) = &a.serve_inner {
        return serve_load::inner(&a.defib, &a.rescue, client_ns, &a.serve_clients);
    }
    if a.serve_only {
        println!("defib benchmark: nginx under load");
        return serve_load::run();
    }
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

    if a.direct_only {
        return direct_boots(&a, &img);
    }
    if a.boot_only {
        boots(&a, &img)?;
        return lowest_ram(&a);
    }
    if a.bitlocker_only {
        return bitlocker(&a, &img);
    }
    general(&a, &img)?;
    bitlocker(&a, &img)?;
    serve_load::run()
}

fn general(a: &Args, img: &UsbImage) -> Result<()> {
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
    boots(a, img)?;
    store_figures(a)?;
    lowest_ram(a)
}

/// The rescue's line `modules: N loaded of M carried, …` and its step
/// lines (`-- NAME done in T s`), from one boot.
fn rescue_lines(out: &qemu::Outcome) -> (Option<String>, Vec<(String, f64)>) {
    let modules = out
        .lines
        .iter()
        .rev()
        .filter(|(_, l)| l.contains(" loaded of "))
        .chain(
            out.lines
                .iter()
                .filter(|(_, l)| l.contains("modules: slowest")),
        )
        .filter_map(|(_, l)| l.find("modules: ").map(|i| l[i..].to_string()))
        .take(2)
        .collect::<Vec<_>>()
        .join("\n    ");
    let modules = (!modules.is_empty()).then_some(modules);
    let steps = out
        .lines
        .iter()
        .filter_map(|(_, l)| {
            let rest = &l[l.find("-- ")? + 3..];
            let (name, t) = rest.split_once(" done in ")?;
            Some((name.to_string(), t.split(' ').next()?.parse().ok()?))
        })
        .collect();
    (modules, steps)
}

/// Boot times: the same kernel with a trivial init against defib to its
/// verdict (direct kernel boot), then the OVMF Secure Boot USB path.
fn boots(a: &Args, img: &UsbImage) -> Result<()> {
    direct_boots(a, img)?;
    sb_boots(a)
}

/// One image's direct-boot files: its kernel, and its initramfs with the
/// payload segment appended.
struct Direct {
    image: PathBuf,
    kernel: PathBuf,
    initrd_both: PathBuf,
}

fn direct_files(a: &Args, image: &std::path::Path, tag: &str) -> Result<Direct> {
    let img = UsbImage::open(image)?;
    let kernel = a.work.join(format!("vmlinuz{tag}"));
    std::fs::write(&kernel, img.read_file("defib/vmlinuz")?)?;
    // QEMU's -initrd takes one file; the kernel unpacks concatenated
    // segments just as it does when GRUB loads two.
    let mut both = img.read_file("defib/initrd.img")?;
    while both.len() % 4 != 0 {
        both.push(0);
    }
    both.extend(img.read_file("defib/payloads.img")?);
    let initrd_both = a.work.join(format!("initrd-both{tag}.img"));
    std::fs::write(&initrd_both, both)?;
    Ok(Direct {
        image: image.to_path_buf(),
        kernel,
        initrd_both,
    })
}

/// The same kernel with a trivial init against defib to its verdict, both
/// booted directly (SeaBIOS, -kernel), alternating, `a.runs` times each;
/// with `--against`, the other images' boots alternate with them in the
/// same run, so a change is compared under the same load.
fn direct_boots(a: &Args, _img: &UsbImage) -> Result<()> {
    let mut images = vec![direct_files(a, &a.image, "")?];
    for (n, other) in a.against.iter().enumerate() {
        images.push(direct_files(a, other, &format!("-{n}"))?);
    }
    let kernel = images[0].kernel.clone();
    let mut bare = Archive::new();
    bare.add_file("init", 0o755, std::fs::read(&a.bare_init)?)?;
    bare.add_dir("dev", 0o755)?;
    let mut cpio = Vec::new();
    bare.write_newc(&mut cpio, 0)?;
    let bare_rd = a.work.join("bare.img");
    std::fs::write(&bare_rd, compress_zstd(&cpio, 12)?)?;
    // DEFIB_BENCH_APPEND adds to the kernel command line of every boot
    // (`printk.time=1 loglevel=7` to see the kernel's side; it slows them).
    let cmd = format!(
        "console=ttyS0,115200 quiet panic=10{}",
        std::env::var("DEFIB_BENCH_APPEND")
            .map(|a| format!(" {a}"))
            .unwrap_or_default()
    );

    let direct = |kernel: &PathBuf, initrds: Vec<PathBuf>, append: String| {
        let mut b = Boot::new(Firmware::Bios, &a.work);
        b.kernel = Some((kernel.clone(), initrds, append));
        b.timeout = Duration::from_secs(180);
        b
    };
    let mut t_bare = Vec::new();
    // Per image: first line, rescue start to verdict, verdict.
    let mut t: Vec<[Vec<Duration>; 3]> = images.iter().map(|_| Default::default()).collect();
    let mut last: Vec<Option<qemu::Outcome>> = images.iter().map(|_| None).collect();
    for i in 0..a.runs {
        let b = direct(&kernel, vec![bare_rd.clone()], cmd.clone());
        t_bare.push(timed_boot(&b, &["bare init up"])?[0]);
        for (k, d) in images.iter().enumerate() {
            // The same kernel and initramfs repairing the McAfee victim,
            // with the stick attached for the report (as on a real PC).
            let vdir = a.work.join(format!("victim{i}-{k}"));
            std::fs::create_dir_all(&vdir)?;
            let v = victim::make_xp_mcafee(&vdir, victim::McafeeSvchost::InDllcache)?;
            let stick = a.work.join("direct-stick.img");
            std::fs::copy(&d.image, &stick)?;
            let mut b = direct(
                &d.kernel,
                vec![d.initrd_both.clone()],
                format!("{cmd} defib.mode=auto defib.after=poweroff"),
            );
            b.stick = Some(stick);
            b.disks = vec![(v.disk.clone(), Bus::Ahci)];
            let out = qemu::run(&b)?;
            let m = ["defib rescue", "defib: verdict repaired"]
                .iter()
                .map(|m| {
                    out.first(m)
                        .with_context(|| format!("boot never printed {m:?}:\n{}", out.text()))
                })
                .collect::<Result<Vec<_>>>()?;
            t[k][0].push(m[0]);
            t[k][1].push(m[1] - m[0]);
            t[k][2].push(m[1]);
            // DEFIB_BENCH_LOG=FILE keeps each defib boot's console, every
            // line with its time since QEMU started, to see where a boot's
            // time goes (FILE.<run> for the first image, FILE.<run>-<k>
            // for the others).
            if let Some(log) = std::env::var_os("DEFIB_BENCH_LOG") {
                let mut text = String::new();
                for (at, l) in &out.lines {
                    text.push_str(&format!("{:8.3} {l}\n", at.as_secs_f64()));
                }
                let suffix = if k == 0 {
                    String::new()
                } else {
                    format!("-{k}")
                };
                std::fs::write(format!("{}.{i}{suffix}", log.to_string_lossy()), text)?;
            }
            last[k] = Some(out);
            std::fs::remove_dir_all(&vdir).ok();
        }
    }
    let bare = median(t_bare);
    println!("  direct kernel boot (SeaBIOS -kernel), McAfee XP victim on AHCI:");
    println!(
        "    bare kernel + trivial init {:>8}  (to its first line)",
        secs(bare)
    );
    for (k, d) in images.iter().enumerate() {
        if images.len() > 1 {
            println!("    {}:", d.image.display());
        }
        let [first, rescue, verdict] = t[k].clone().map(median);
        println!(
            "    defib, to first line       {:>8}  ratio {:.2}",
            secs(first),
            first.as_secs_f64() / bare.as_secs_f64()
        );
        println!(
            "    rescue start to verdict    {:>8}  (modules, devices, repair, report)",
            secs(rescue)
        );
        let ratio = verdict.as_secs_f64() / bare.as_secs_f64();
        println!(
            "    defib, boot to REPAIRED    {:>8}  ratio {ratio:.2} (goal <= 1.25: {})",
            secs(verdict),
            if ratio <= 1.25 { "met" } else { "not met" }
        );
        if let Some(out) = &last[k] {
            let (modules, steps) = rescue_lines(out);
            println!(
                "    {}",
                modules.unwrap_or_else(|| "modules: no line from the rescue".into())
            );
            let steps: Vec<String> = steps
                .iter()
                .filter(|(_, t)| *t >= 0.005)
                .map(|(n, t)| format!("{n} {t:.2}"))
                .collect();
            println!("    rescue steps (s)           {}", steps.join(", "));
        }
    }
    Ok(())
}

/// The real path: OVMF with Secure Boot enforcing, from the USB stick.
fn sb_boots(a: &Args) -> Result<()> {
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
    Ok(())
}

/// Build time and image size against the store's size, and what the
/// rescue's memory looks like after restoring svchost.exe from the largest
/// store on the stick in a 256 MiB machine (its `memory:` line: VmHWM,
/// the rescue's peak resident set, and MemAvailable after the repair).
fn store_figures(a: &Args) -> Result<()> {
    println!("  known-good store on the medium (svchost.exe + N x 1 MiB synthetic objects):");
    let mut largest = None;
    for &mib in &a.store_mib {
        let payloads = a.work.join(format!("payloads-{mib}"));
        let pb = payloads.join("playbooks");
        std::fs::create_dir_all(&pb)?;
        for e in std::fs::read_dir("payloads/playbooks")? {
            let p = e?.path();
            std::fs::copy(&p, pb.join(p.file_name().context("playbook name")?))?;
        }
        victim::store_payloads(&payloads)?;
        bigstore::add_synthetic(&payloads.join("store"), mib)?;
        let out = a.work.join(format!("store-{mib}.img"));
        let t = Instant::now();
        let st = Command::new(&a.defib)
            .args(["build", "--offline", "--json", "--out"])
            .arg(&out)
            .arg("--payloads")
            .arg(&payloads)
            .arg("--rescue")
            .arg(&a.rescue)
            .stdout(std::process::Stdio::null())
            .status()
            .context("running defib build")?;
        if !st.success() {
            bail!("defib build with a {mib} MiB store failed");
        }
        let took = t.elapsed();
        let payload_seg = UsbImage::open(&out)?.read_file("defib/payloads.img")?.len();
        println!(
            "    store {mib:>4} MiB: build {:>8}, image {:>7.1} MiB, payload segment {:>5.1} KiB",
            secs(took),
            std::fs::metadata(&out)?.len() as f64 / 1048576.0,
            payload_seg as f64 / 1024.0
        );
        std::fs::remove_dir_all(&payloads).ok();
        if largest.as_ref().is_none_or(|(m, _)| mib > *m) {
            largest = Some((mib, out));
        }
    }
    let Some((mib, stick)) = largest else {
        return Ok(());
    };
    let vdir = a.work.join("store-victim");
    std::fs::create_dir_all(&vdir)?;
    let v = victim::make_xp_mcafee(&vdir, victim::McafeeSvchost::InStore)?;
    let mut b = Boot::new(Firmware::UefiSb, &a.work);
    b.stick = Some(stick);
    b.disks = vec![(v.disk.clone(), Bus::Ahci)];
    b.memory_mib = 256;
    b.stop_on = Some("defib: verdict".into());
    b.timeout = Duration::from_secs(900);
    let out = qemu::run(&b)?;
    if !out.contains("defib: verdict repaired") {
        bail!("the {mib} MiB store boot did not repair:\n{}", out.text());
    }
    let line = out
        .text()
        .lines()
        .find(|l| l.contains("memory: rescue peak"))
        .map(str::to_string)
        .with_context(|| format!("no memory line in the boot log:\n{}", out.text()))?;
    let num = |key: &str| -> Option<u64> {
        let i = line.find(key)?;
        line[..i].split_whitespace().next_back()?.parse().ok()
    };
    let (peak, avail) = (num("KiB (VmHWM)"), num("KiB (MemAvailable)"));
    println!(
        "    restore from the {mib} MiB store, 256 MiB RAM, OVMF Secure Boot: \
         rescue peak {} MiB, MemAvailable after {} MiB",
        peak.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
        avail.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
    );
    std::fs::remove_dir_all(&vdir).ok();
    Ok(())
}

/// One corpus image: file, recovery password, its protector's GUID.
struct CorpusImage {
    name: &'static str,
    img: PathBuf,
    rp: String,
    rp_guid: String,
}

/// Extracts BitLocker corpus images (never copied into the repository).
fn corpus_images(dir: &std::path::Path, names: &[&'static str]) -> Result<Vec<CorpusImage>> {
    let corpora =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpora/bitlocker");
    let tarball = corpora.join("bitlk-images.tar.xz");
    let st = Command::new("tar")
        .arg("xJSf")
        .arg(&tarball)
        .arg("-C")
        .arg(dir)
        .args(names.iter().map(|n| format!("{n}.img")))
        .status()
        .with_context(|| format!("extracting {}", tarball.display()))?;
    if !st.success() {
        bail!("extracting {} failed", tarball.display());
    }
    let conf = std::fs::read_to_string(corpora.join("images.conf"))?;
    names
        .iter()
        .map(|n| {
            let section = conf
                .split(&format!("[{n}]"))
                .nth(1)
                .with_context(|| format!("{n} not in images.conf"))?
                .split("\n[")
                .next()
                .unwrap_or("");
            let get = |k: &str| {
                section
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{k}=")))
                    .unwrap_or("")
                    .trim()
                    .to_string()
            };
            Ok(CorpusImage {
                name: n,
                img: dir.join(format!("{n}.img")),
                rp: get("RP"),
                rp_guid: get("RP_VMK_GUID"),
            })
        })
        .collect()
}

/// The rescue's unlock line: `bitlocker: DEV unlocked in T s (derive D s,
/// map M s; ...)` -> (T, D, M).
fn unlock_times(out: &qemu::Outcome, dev: &str) -> Option<(f64, f64, f64)> {
    let prefix = format!("bitlocker: {dev} unlocked in ");
    let line = out
        .lines
        .iter()
        .find_map(|(_, l)| l.find(&prefix).map(|i| &l[i + prefix.len()..]))?;
    let num = |s: &str| s.split(' ').next()?.parse::<f64>().ok();
    let total = num(line)?;
    let derive = num(line.split("derive ").nth(1)?)?;
    let map = num(line.split("map ").nth(1)?)?;
    Some((total, derive, map))
}

/// The time the rescue printed for one of its steps (`-- NAME done in T s`).
fn step_time(out: &qemu::Outcome, step: &str) -> Option<f64> {
    let prefix = format!("-- {step} done in ");
    out.lines.iter().find_map(|(_, l)| {
        let i = l.find(&prefix)?;
        l[i + prefix.len()..].split(' ').next()?.parse().ok()
    })
}

/// BitLocker figures, from the rescue's own timing lines, booting the
/// image's kernel directly (SeaBIOS, -kernel) with a stick carrying the
/// keys: the unlock of each corpus volume (key derivation — the 2^20-round
/// SHA-256 stretch and the AES-CCM unwraps — then the dm-crypt mapping),
/// and the CrowdStrike repair on a BitLocker volume against the same
/// victim unencrypted (the rescue's `evaluate` step: unlock, mounts, scan,
/// fix, verification).
fn bitlocker(a: &Args, img: &UsbImage) -> Result<()> {
    let kernel = a.work.join("vmlinuz");
    std::fs::write(&kernel, img.read_file("defib/vmlinuz")?)?;
    let mut both = img.read_file("defib/initrd.img")?;
    while both.len() % 4 != 0 {
        both.push(0);
    }
    both.extend(img.read_file("defib/payloads.img")?);
    let initrd = a.work.join("initrd-both.img");
    std::fs::write(&initrd, both)?;
    let boot = |csv: &str, disks: Vec<(PathBuf, Bus)>| -> Result<qemu::Outcome> {
        let stick = a.work.join("bl-stick.img");
        std::fs::copy(&a.image, &stick)?;
        defib_builder::image::add_file_to_image(&stick, "keys/BitLockerKeys.csv", csv.as_bytes())?;
        let mut b = Boot::new(Firmware::Bios, &a.work);
        b.kernel = Some((
            kernel.clone(),
            vec![initrd.clone()],
            "console=ttyS0,115200 quiet panic=10 defib.mode=auto defib.after=poweroff defib.keywait=0"
                .into(),
        ));
        b.timeout = Duration::from_secs(600);
        b.stick = Some(stick);
        b.disks = disks;
        let out = qemu::run(&b)?;
        if !out.exited {
            bail!("the boot did not end:\n{}", out.text());
        }
        Ok(out)
    };

    // Unlock per volume: four Windows-made volumes, one boot per run.
    let names = [
        "bitlk-aes-xts-128",
        "bitlk-aes-cbc-128",
        "bitlk-aes-cbc-elephant-128",
        "bitlk-aes-xts-128-4k",
    ];
    let cdir = a.work.join("corpus");
    std::fs::create_dir_all(&cdir)?;
    let images = corpus_images(&cdir, &names)?;
    let mut csv = String::from("KeyID,RecoveryKey\n");
    for c in &images {
        csv.push_str(&format!("{},{}\n", c.rp_guid, c.rp));
    }
    let mut per: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); images.len()];
    for _ in 0..a.runs {
        let out = boot(
            &csv,
            images
                .iter()
                .map(|c| (c.img.clone(), Bus::Virtio))
                .collect(),
        )?;
        for (i, p) in per.iter_mut().enumerate() {
            let dev = format!("vd{}", (b'a' + i as u8) as char);
            p.push(
                unlock_times(&out, &dev)
                    .with_context(|| format!("no unlock line for {dev}:\n{}", out.text()))?,
            );
        }
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(|x, y| x.total_cmp(y));
        v[v.len() / 2]
    };
    println!("  BitLocker unlock in the rescue (recovery password from the stick's CSV; TCG):");
    for (c, p) in images.iter().zip(per) {
        println!(
            "    {:<28} {:>6.2} s  (derive {:.2} s, map {:.2} s)",
            c.name,
            med(p.iter().map(|t| t.0).collect()),
            med(p.iter().map(|t| t.1).collect()),
            med(p.iter().map(|t| t.2).collect()),
        );
    }

    // Repair: the CrowdStrike victim, plain and on BitLocker (same tree,
    // same playbook).
    let mut plain = Vec::new();
    let mut locked = Vec::new();
    let mut unlock = Vec::new();
    for i in 0..a.runs {
        let vdir = a.work.join(format!("cs{i}"));
        std::fs::create_dir_all(&vdir)?;
        let v = victim::make_win10_crowdstrike(&vdir)?;
        let out = boot("KeyID,RecoveryKey\n", vec![(v.disk.clone(), Bus::Ahci)])?;
        if !out.contains("defib: verdict repaired") {
            bail!(
                "the plain CrowdStrike victim was not repaired:\n{}",
                out.text()
            );
        }
        plain.push(step_time(&out, "evaluate").context("no evaluate time")?);
        std::fs::remove_dir_all(&vdir).ok();

        let vdir = a.work.join(format!("csbl{i}"));
        std::fs::create_dir_all(&vdir)?;
        let (v, key) = victim::make_win10_crowdstrike_bitlocker(&vdir)?;
        let csv = format!(
            "KeyID,RecoveryKey\n{},{}\n",
            key.protector, key.recovery_password
        );
        let out = boot(&csv, vec![(v.disk.clone(), Bus::Ahci)])?;
        if !out.contains("defib: verdict repaired") {
            bail!(
                "the BitLocker CrowdStrike victim was not repaired:\n{}",
                out.text()
            );
        }
        locked.push(step_time(&out, "evaluate").context("no evaluate time")?);
        let dev = out
            .lines
            .iter()
            .find_map(|(_, l)| {
                let r = l.split("bitlocker: ").nth(1)?;
                r.contains(" unlocked in ")
                    .then(|| r.split(' ').next().unwrap_or("").to_string())
            })
            .context("no unlock line")?;
        unlock.push(unlock_times(&out, &dev).context("no unlock line")?.0);
        std::fs::remove_dir_all(&vdir).ok();
    }
    let (p, l, u) = (med(plain), med(locked), med(unlock));
    println!("  CrowdStrike repair, rescue's evaluate step (mount, scan, fix, verify), AHCI:");
    println!("    unencrypted NTFS           {p:>6.2} s");
    println!(
        "    BitLocker XTS-AES-128      {l:>6.2} s  (of which unlock {u:.2} s; repair {:.2} s)",
        l - u
    );
    Ok(())
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
