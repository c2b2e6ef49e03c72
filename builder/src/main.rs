//! `defib`: build defib rescue images and read used ones back.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use defib_builder::bootmenu::After;
use defib_builder::build::{build, BuildConfig};
use defib_builder::fetch::{self, Fetched};
use defib_builder::kmod::{ModuleList, DEFAULT_LIST};
use defib_builder::progress::Progress;
use defib_builder::{inspect, keys, qemu, size::parse_size, store};
use defib_rescue::store::{Store, OBJECTS_DIR};
use std::path::{Path, PathBuf};

/// Build defib rescue images: a USB stick that boots a PC broken by a bad
/// security update, repairs Windows offline and reports what it did.
#[derive(Parser)]
#[command(name = "defib", version, max_term_width = 80)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Download Debian's signed kernel, shim, GRUB and helpers
    Fetch(FetchConfig),
    /// Build the USB image (fetches the boot parts first if needed)
    Build(BuildArgs),
    /// Write a PXE/HTTP network boot tree (folder or .zip) of the same build
    Pxe(PxeConfig),
    /// Serve a fleet: dnsmasq (DHCP/TFTP) and nginx (HTTP, report PUTs) on
    /// one interface, with a live ledger of the reports (run as root)
    Serve(ServeConfig),
    /// Show an image's (or ISO's) manifest and store, and the reports left
    /// on a used stick
    Inspect(InspectConfig),
    /// Boot an image in QEMU (software emulation) and show its console
    Try(TryConfig),
    /// Check playbooks, or start a new one from a template
    #[command(subcommand)]
    Playbook(PlaybookCmd),
    /// Manage the known-good store of system files
    #[command(subcommand)]
    Store(StoreCmd),
    /// Fleet table of the reports on used sticks or in folders
    Reports(ReportsConfig),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages: defib(1), rescue(1) and one per subcommand
    Man {
        /// Folder to write the pages into (created if missing)
        #[arg(long, value_name = "DIR", default_value = "out/man")]
        out: PathBuf,
    },
    /// Seal BitLocker key files to a passphrase, or check a sealed one
    #[command(subcommand)]
    Keys(KeysCmd),
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Encrypt key exports (CSV, the .TXT Windows saves) to a passphrase
    /// as one sealed file (age format) for the stick's keys folder
    Seal {
        /// Plain key files; each must hold at least one recovery key
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The sealed file to write (ends in .age, e.g. keys.csv.age)
        #[arg(long, value_name = "SEALED")]
        out: PathBuf,
        /// Read the passphrase from the first line of this file instead
        /// of asking twice on the terminal
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
        /// scrypt work factor, log2 N (memory 2^N KiB: 16 = 64 MiB); see
        /// docs/bitlocker.md before raising it
        #[arg(long, value_name = "N", default_value_t = defib_rescue::bitlocker::sealed::DEFAULT_WORK_FACTOR,
              value_parser = clap::value_parser!(u8).range(
                  defib_rescue::bitlocker::sealed::MIN_WORK_FACTOR as i64
                  ..=defib_rescue::bitlocker::sealed::MAX_WORK_FACTOR as i64))]
        work_factor: u8,
        /// Overwrite --out if it exists
        #[arg(long)]
        replace: bool,
    },
    /// Open a sealed file and list its protector IDs (never the keys)
    Check {
        sealed: PathBuf,
        /// Read the passphrase from the first line of this file
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PlaybookCmd {
    /// Parse and validate playbooks; errors name the file and line
    Check {
        /// A playbooks folder or .toml files [default: payloads/playbooks]
        paths: Vec<PathBuf>,
    },
    /// Write a commented playbook template that passes `check`
    New {
        /// The playbook's id: lowercase letters, digits and '-'
        id: String,
        /// Where to write it [default: ID.toml]; never overwrites
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// The incident's date, YYYY-MM-DD [default: today]
        #[arg(long)]
        date: Option<String>,
    },
}

#[derive(Args)]
struct ReportsConfig {
    /// Images, stick devices, or folders of report .json files
    #[arg(required = true)]
    sources: Vec<PathBuf>,
    /// Print CSV
    #[arg(long, conflicts_with = "json")]
    csv: bool,
    /// Print JSON
    #[arg(long)]
    json: bool,
    /// List the BitLocker protectors opened with a recovery password
    /// (typed, key file, sealed key file, network), one per machine and
    /// protector, as CSV (or --json): the keys to rotate
    #[arg(long)]
    keys_used: bool,
    /// The Secure Boot inventory per machine (latest report), as CSV (or
    /// --json): Secure Boot state, readiness for the 2023 certificates
    /// (machines that need the update first), KEK and db, dbx size, SBAT
    /// level
    #[arg(long, conflicts_with = "keys_used")]
    firmware: bool,
    /// Write a self-contained HTML page of the fleet to FILE: counts by
    /// verdict, the machines that need a person first, each report one
    /// click away
    #[arg(long, value_name = "FILE", conflicts_with_all = ["csv", "json", "keys_used", "firmware"])]
    html: Option<PathBuf>,
}

#[derive(Args)]
struct TryConfig {
    /// The image to boot: a USB stick, or a CD-ROM if it ends in .iso
    image: PathBuf,
    /// Firmware to boot with
    #[arg(long, value_enum, default_value = "uefi-sb")]
    firmware: qemu::Firmware,
    /// A disk to attach as the PC's internal drive (repeatable)
    #[arg(long, value_name = "DISK")]
    disk: Vec<PathBuf>,
    /// How the internal drives are attached
    #[arg(long, value_enum, default_value = "ahci")]
    bus: qemu::Bus,
    /// Give up after this many seconds
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

#[derive(Args)]
struct FetchConfig {
    /// Folder for the .deb files [default: ~/.cache/defib/debs/trixie]
    #[arg(long, value_name = "DIR")]
    dest: Option<PathBuf>,
    /// Debian mirror URL [default: the Debian mirror in the host's apt sources]
    #[arg(long, value_name = "URL", env = "DEFIB_MIRROR", hide_env_values = true)]
    mirror: Option<String>,
    /// Debian security mirror URL, used with --mirror
    #[arg(
        long,
        value_name = "URL",
        env = "DEFIB_SECURITY_MIRROR",
        hide_env_values = true
    )]
    security_mirror: Option<String>,
    /// Print a JSON summary on stdout
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BuildArgs {
    /// Where to write the image [default: out/defib.img, or out/defib.iso]
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// usb: GPT + FAT32 disk image (UEFI and BIOS); iso: hybrid ISO (CD,
    /// virtual media, or written to a stick)
    #[arg(long, value_enum, default_value = "usb")]
    format: Format,
    #[command(flatten)]
    inputs: Inputs,
    /// Free room on the stick for reports
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    free_space: u64,
    /// Print a JSON summary on stdout
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PxeConfig {
    /// Where to write the tree: a folder, or a FILE.zip
    #[arg(long, value_name = "DIR|FILE.zip", default_value = "out/pxe")]
    out: PathBuf,
    /// Base URL serving the tree, for boot-http.ipxe (big files over HTTP)
    #[arg(long, value_name = "URL")]
    http_base: Option<String>,
    /// Extra kernel arguments, e.g. 'defib.report=http://10.0.0.5/reports/'
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    append: Option<String>,
    /// Where PXE-booted rescues GET BitLocker keys the stick would carry:
    /// http://IPv4[:PORT]/folder/ (files named after protector GUIDs) or
    /// one key file's URL (docs/bitlocker.md)
    #[arg(long, value_name = "URL")]
    keys_url: Option<String>,
    #[command(flatten)]
    inputs: Inputs,
    /// Print a JSON summary on stdout
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ServeConfig {
    /// The interface facing the PCs (it must have an IPv4 address)
    #[arg(long, value_name = "IFACE")]
    interface: String,
    /// Folder the reports are collected in (created if missing)
    #[arg(long, value_name = "DIR")]
    reports: PathBuf,
    /// Which of the interface's addresses to serve from, ADDRESS/PREFIX
    /// [default: its first IPv4 address]
    #[arg(long, value_name = "CIDR")]
    address: Option<String>,
    /// Be the DHCP server, leasing FIRST..LAST (an isolated network only)
    #[arg(long, value_name = "FIRST,LAST", conflicts_with = "proxy_dhcp")]
    dhcp_range: Option<String>,
    /// Answer only PXE clients, beside the site's own DHCP server
    #[arg(long)]
    proxy_dhcp: bool,
    /// auto: repair; scan: look and report, change nothing
    #[arg(long, value_enum, default_value = "auto")]
    mode: ServeMode,
    /// HTTP port for the tree and the reports
    #[arg(long, default_value_t = 80)]
    port: u16,
    /// Extra kernel arguments, e.g. 'defib.keywait=0'
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    append: Option<String>,
    /// BitLocker keys to hand out over HTTPS: a key file (AD/Intune CSV,
    /// the .TXT Windows saves, .BEK) or a folder of them
    #[arg(long, value_name = "FILE|DIR", conflicts_with = "keys_url")]
    serve_keys: Option<PathBuf>,
    /// Keys on another server instead: http[s]://IPv4[:PORT]/keys/ (an
    /// https:// one needs its pin in --append defib.tls=sha256:...)
    #[arg(long, value_name = "URL")]
    keys_url: Option<String>,
    /// HTTPS port for the reports and keys
    #[arg(long, default_value_t = 443)]
    tls_port: u16,
    /// Where the server's certificate is kept (made on first use; its
    /// SHA-256 is pinned on every kernel command line)
    #[arg(long, value_name = "DIR", default_value = defib_builder::servetls::DEFAULT_DIR)]
    tls_dir: PathBuf,
    /// Keep configs, logs and the tree in this folder [default: a
    /// temporary folder, removed on exit]
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    #[command(flatten)]
    inputs: Inputs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ServeMode {
    Auto,
    Scan,
}

/// What goes into an image or PXE tree, shared by `build` and `pxe`.
#[derive(Args)]
struct Inputs {
    /// Take the .deb files from this folder (offline, air-gapped builds)
    #[arg(long, value_name = "DIR")]
    debs: Option<PathBuf>,
    /// Payloads folder (playbooks, known-good store) [default: ./payloads,
    /// else the installed /usr/share/defib/payloads]
    #[arg(long, value_name = "DIR")]
    payloads: Option<PathBuf>,
    /// The static rescue binary [default: next to this defib build]
    #[arg(
        long,
        value_name = "FILE",
        env = "DEFIB_RESCUE",
        hide_env_values = true
    )]
    rescue: Option<PathBuf>,
    /// Extra playbooks layered over the payloads' own: a folder of .toml
    /// files; a playbook with an id already there replaces it (repeatable)
    #[arg(long, value_name = "DIR")]
    playbooks: Vec<PathBuf>,
    /// An extra known-good store layered over the payloads' own (made with
    /// `defib store import`); verified first (repeatable)
    #[arg(long, value_name = "DIR")]
    store: Vec<PathBuf>,
    /// Kernel module list (TOML) [default: the built-in list]
    #[arg(long, value_name = "FILE")]
    modules: Option<PathBuf>,
    /// What the rescue does after its verdict
    #[arg(long, value_enum, default_value = "reboot")]
    after: After,
    /// BitLocker key files to carry in the stick's keys folder: CSV
    /// exports, the .TXT Windows saves, .BEK startup keys (repeatable).
    /// Whoever holds the stick holds the keys: seal them or keep it safe
    #[arg(long, value_name = "FILE")]
    keys: Vec<PathBuf>,
    /// Never download: fail if the boot parts are not in the cache
    #[arg(long)]
    offline: bool,
    /// Debian mirror URL, if parts must be fetched
    #[arg(long, value_name = "URL", env = "DEFIB_MIRROR", hide_env_values = true)]
    mirror: Option<String>,
}

/// The medium `defib build` writes.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Usb,
    Iso,
}

#[derive(Args)]
struct InspectConfig {
    /// A defib image file, the block device of a used stick, or a defib ISO
    image: PathBuf,
    /// Read every store object on the medium and check its SHA-256
    #[arg(long)]
    verify_store: bool,
    /// Check the stick's shim and GRUB against this SBAT level (a file
    /// holding `sbat,1,<date>` and `component,generation` lines, e.g. a
    /// report's `firmware.secure_boot.sbat_level`) [default: the newest
    /// level the stick's own shim knows]
    #[arg(long, value_name = "FILE")]
    sbat_level: Option<PathBuf>,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Fetch(c) => cmd_fetch(c),
        Cmd::Build(c) => cmd_build(c),
        Cmd::Pxe(c) => cmd_pxe(c),
        Cmd::Serve(c) => cmd_serve(c),
        Cmd::Inspect(c) => cmd_inspect(c),
        Cmd::Try(c) => cmd_try(c),
        Cmd::Playbook(PlaybookCmd::Check { paths }) => cmd_playbook_check(paths),
        Cmd::Store(c) => store(c),
        Cmd::Reports(c) => cmd_reports(c),
        Cmd::Playbook(PlaybookCmd::New { id, out, date }) => cmd_playbook_new(&id, out, date),
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "defib", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Man { out } => cmd_man(&out),
        Cmd::Keys(c) => cmd_keys(c),
    };
    if let Err(e) = r {
        eprintln!("defib: error: {e:#}");
        std::process::exit(2);
    }
}

fn sources(mirror: Option<&str>, security: Option<&str>) -> Result<Vec<fetch::Source>> {
    match mirror {
        Some(m) => Ok(fetch::sources_for_mirror(m, security)),
        None => fetch::sources_from_host(Path::new("/etc/apt")),
    }
}

fn run_fetch(
    dest: &Path,
    mirror: Option<&str>,
    security: Option<&str>,
    p: &mut Progress,
) -> Result<Vec<Fetched>> {
    let cache = fetch::cache_dir()?;
    fetch::fetch(&cache, dest, &sources(mirror, security)?, &mut |m| {
        p.step(m)
    })
}

fn print_parts(parts: &[Fetched]) {
    for f in parts {
        println!("{:<34} {:<40} sha256 {}", f.package, f.version, f.sha256);
    }
}

fn cmd_fetch(c: FetchConfig) -> Result<()> {
    let dest = match c.dest {
        Some(d) => d,
        None => fetch::default_debs_dir()?,
    };
    let mut p = Progress::new(c.json);
    let parts = run_fetch(
        &dest,
        c.mirror.as_deref(),
        c.security_mirror.as_deref(),
        &mut p,
    )?;
    p.finish();
    if c.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"dest": dest, "parts": parts}))?
        );
    } else {
        println!("boot parts in {}:", dest.display());
        print_parts(&parts);
    }
    Ok(())
}

/// `<dir of this exe>/../<target>/release/rescue`, as scripts/build lays
/// out `target/`.
fn default_rescue() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the defib executable")?;
    let dir = exe
        .parent()
        .context("defib executable has no parent folder")?;
    let candidates = [
        dir.join("../x86_64-unknown-linux-gnu/release/rescue"),
        dir.join("../../x86_64-unknown-linux-gnu/release/rescue"),
        dir.join("rescue"),
    ];
    candidates.iter().find(|p| p.is_file()).cloned().with_context(|| {
        "no static rescue binary found next to defib; build with scripts/build or pass --rescue FILE".to_string()
    })
}

/// `./payloads` in a source tree; otherwise the payloads installed with
/// defib (`/usr/share/defib/payloads` beside `/usr/bin/defib`, as the
/// .deb lays them out). `./payloads` again when neither exists, so the
/// error names the folder a user would expect.
fn default_payloads() -> PathBuf {
    let here = PathBuf::from("payloads");
    if here.is_dir() {
        return here;
    }
    let installed = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("../share/defib/payloads")));
    match installed {
        Some(p) if p.is_dir() => p,
        _ => here,
    }
}

fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        // 1980-01-01, the FAT epoch: a fixed default keeps builds
        // reproducible when no date is given.
        Err(_) => Ok(315_532_800),
    }
}

/// The build configuration from the shared inputs, fetching the boot parts
/// first when the cache lacks them (unless `--offline`).
/// The build's configuration, and the staged payloads folder it points at
/// when `--playbooks`/`--store` layers were given (kept until the build
/// is done).
fn build_config(
    i: Inputs,
    out: PathBuf,
    free_space: u64,
    p: &mut Progress,
) -> Result<(BuildConfig, Option<defib_builder::layer::Staged>)> {
    let debs = match &i.debs {
        Some(d) => d.clone(),
        None => {
            let d = fetch::default_debs_dir()?;
            let have = fetch::describe(&d).unwrap_or_default();
            let complete = fetch::PACKAGES
                .iter()
                .all(|n| have.iter().any(|f| f.package == *n));
            if !complete {
                if i.offline {
                    anyhow::bail!(
                        "boot parts missing in {} and --offline given; run `defib fetch` first",
                        d.display()
                    );
                }
                p.step("boot parts not cached yet: fetching");
                run_fetch(&d, i.mirror.as_deref(), None, p)?;
            }
            d
        }
    };
    let (modules_text, origin) = match &i.modules {
        Some(f) => (
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
            f.display().to_string(),
        ),
        None => (DEFAULT_LIST.to_string(), "built-in module list".to_string()),
    };
    let base = match i.payloads {
        Some(p) => p,
        None => default_payloads(),
    };
    let staged = if i.playbooks.is_empty() && i.store.is_empty() {
        None
    } else {
        Some(defib_builder::layer::stage(
            &base,
            &i.playbooks,
            &i.store,
            &mut |m| p.step(m),
        )?)
    };
    let cfg = BuildConfig {
        debs,
        rescue: match i.rescue {
            Some(r) => r,
            None => default_rescue()?,
        },
        payloads: staged.as_ref().map_or(base, |s| s.path()),
        out,
        free_space,
        source_date_epoch: source_date_epoch()?,
        modules: ModuleList::parse(&modules_text, &origin)?,
        modules_text,
        after: i.after,
        keys: i.keys,
    };
    Ok((cfg, staged))
}

fn cmd_build(c: BuildArgs) -> Result<()> {
    let mut p = Progress::new(c.json);
    let out = c.out.clone().unwrap_or_else(|| {
        PathBuf::from(match c.format {
            Format::Usb => "out/defib.img",
            Format::Iso => "out/defib.iso",
        })
    });
    let (cfg, _staged) = build_config(c.inputs, out, c.free_space, &mut p)?;
    if let Some(parent) = cfg.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let s = match c.format {
        Format::Usb => build(&cfg, &mut |m| p.step(m))?,
        Format::Iso => defib_builder::iso::build_iso(&cfg, &mut |m| p.step(m))?,
    };
    p.finish();
    if c.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "{}: {} MiB, build {}, kernel {}, {} modules, initramfs {} KiB",
            s.image.display(),
            s.image_size >> 20,
            s.build_id,
            s.kernel_release,
            s.modules,
            s.initramfs_size / 1024
        );
        // Will PCs whose SBAT level is the newest this shim knows still
        // boot it? (A warning: the packages are what Debian ships.)
        match sbat_of(&s.image) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("defib: warning: SBAT not checked: {e:#}"),
        }
        println!(
            "write it to a stick with: sudo dd if={} of=/dev/sdX bs=4M conv=fsync",
            s.image.display()
        );
    }
    Ok(())
}

/// The SBAT line of a written image: its loaders against the newest
/// level its shim knows.
fn sbat_of(image: &std::path::Path) -> Result<String> {
    let (shim, grub) = inspect::loaders(image)?;
    let level =
        defib_builder::sbat::shim_latest(&shim)?.context("the shim carries no SBAT level")?;
    Ok(defib_builder::sbat::check(&shim, &grub, &level)?.0)
}

/// `--keys` puts key files on a stick; a network tree has no stick, and
/// silently dropping them would leave a PC at its recovery prompt.
fn no_stick_keys(inputs: &Inputs, instead: &str) -> Result<()> {
    if !inputs.keys.is_empty() {
        bail!("--keys carries key files on a USB stick; a network boot has none: {instead}");
    }
    Ok(())
}

fn cmd_pxe(c: PxeConfig) -> Result<()> {
    no_stick_keys(
        &c.inputs,
        "serve them with --keys-url (see docs/pxe.md), or use defib serve --serve-keys",
    )?;
    let mut p = Progress::new(c.json);
    let (cfg, _staged) = build_config(c.inputs, c.out.clone(), 0, &mut p)?;
    let opts = defib_builder::pxe::PxeOptions {
        http_base: c.http_base,
        append: defib_builder::pxe::append_keys_url(c.append, c.keys_url.as_deref())?,
    };
    let s = defib_builder::pxe::build_pxe(&cfg, &c.out, &opts, &mut |m| p.step(m))?;
    p.finish();
    if c.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "{}: PXE tree of build {}, {} files, {} MiB",
            s.out.display(),
            s.build_id,
            s.files.len() + 1,
            s.files.iter().map(|f| f.size).sum::<u64>() >> 20
        );
        println!("next: see README.txt there, or docs/pxe.md");
    }
    Ok(())
}

/// `defib serve`: check everything that can be checked before building,
/// write the tree into the run folder, then serve until Ctrl-C/SIGTERM.
fn cmd_serve(c: ServeConfig) -> Result<()> {
    use defib_builder::serve;
    no_stick_keys(
        &c.inputs,
        "use --serve-keys FILE|DIR to hand them out over HTTPS",
    )?;
    let dhcp = match (&c.dhcp_range, c.proxy_dhcp) {
        (Some(r), _) => {
            let (a, b) = serve::parse_range(r)?;
            serve::Dhcp::Range(a, b)
        }
        (None, true) => serve::Dhcp::Proxy,
        (None, false) => bail!(
            "choose how PCs get addresses: --proxy-dhcp beside the site's DHCP server, \
             or --dhcp-range FIRST,LAST on an isolated network with none"
        ),
    };
    let opts = serve::ServeOptions {
        interface: c.interface.clone(),
        address: c.address.as_deref().map(serve::parse_cidr).transpose()?,
        dhcp,
        port: c.port,
        scan_only: c.mode == ServeMode::Scan,
        append: c.append.clone(),
        reports: c.reports.clone(),
        run_dir: c.run_dir.clone(),
        tls_port: c.tls_port,
        tls_dir: c.tls_dir.clone(),
        keys: c.serve_keys.clone(),
    };
    let temp;
    let run = match &c.run_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("defib-serve.")
                .tempdir()
                .context("creating the run folder")?;
            temp.path().to_path_buf()
        }
    };
    let (plan, programs) = serve::prepare(&opts, &run)?;
    let mut p = Progress::new(false);
    let (cfg, _staged) = build_config(c.inputs, plan.tree(), 0, &mut p)?;
    let mut words = plan.kernel_words();
    if opts.scan_only {
        words.push("defib.mode=scan".into());
    }
    if let Some(a) = &opts.append {
        words.push(defib_builder::pxe::check_append(a)?);
    }
    let pxe_opts = defib_builder::pxe::PxeOptions {
        http_base: Some(plan.http_base()),
        append: defib_builder::pxe::append_keys_url(Some(words.join(" ")), c.keys_url.as_deref())?,
    };
    let s = defib_builder::pxe::build_pxe(&cfg, &plan.tree(), &pxe_opts, &mut |m| p.step(m))?;
    p.finish();
    println!("{}", serve::banner(&plan, &s.build_id, &opts.reports));
    serve::run(&plan, &programs, &opts.reports)
}

fn cmd_inspect(c: InspectConfig) -> Result<()> {
    let i = inspect::inspect(&c.image)?;
    let (shim, grub) = inspect::loaders(&c.image)?;
    let level = match &c.sbat_level {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading the SBAT level {}", f.display()))?;
            defib_builder::sbat::parse_level(&text)
                .with_context(|| format!("SBAT level {}", f.display()))?
        }
        None => defib_builder::sbat::shim_latest(&shim)
            .context("the stick's shim")?
            .context("the stick's shim carries no SBAT level: give --sbat-level FILE")?,
    };
    let (sbat_line, revoked) = defib_builder::sbat::check(&shim, &grub, &level)?;
    let st = if inspect::is_iso(&c.image)? {
        let iso = inspect::IsoImage::open(&c.image)?;
        defib_builder::storesync::medium_store_with(&|p: &str| iso.read_file(p), c.verify_store)
    } else {
        let img = defib_builder::image::UsbImage::open(&c.image)?;
        defib_builder::storesync::medium_store(&img, c.verify_store)
    };
    if c.json {
        let mut v = serde_json::to_value(&i)?;
        v["store"] = serde_json::to_value(&st)?;
        v["sbat"] = serde_json::json!({
            "level": level.date,
            "revoked": revoked.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            "line": sbat_line,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", inspect::render(&c.image, &i));
        print!("{}", render_medium_store(&st));
        println!("  {sbat_line}");
    }
    if !revoked.is_empty() {
        bail!(
            "{}: a PC at SBAT level {} refuses this stick ({}); rebuild it with current packages (scripts/build)",
            c.image.display(),
            level.date,
            revoked.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("; ")
        );
    }
    if !st.problems.is_empty() {
        bail!(
            "the store on {} has {} problem(s); run `defib store sync {} --store DIR`",
            c.image.display(),
            st.problems.len(),
            c.image.display()
        );
    }
    Ok(())
}

/// `defib playbook new`: the template, written beside nothing it could
/// replace.
fn cmd_playbook_new(id: &str, out: Option<PathBuf>, date: Option<String>) -> Result<()> {
    let date = match date {
        Some(d) => d,
        None => defib_rescue::runid::rfc3339(std::time::SystemTime::now())[..10].to_string(),
    };
    let text = defib_builder::template::playbook(id, &date)?;
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{id}.toml")));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&out)
        .with_context(|| {
            format!(
                "creating {} (an existing file is never overwritten; pick another --out)",
                out.display()
            )
        })?;
    std::io::Write::write_all(&mut f, text.as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {}: edit the TODO lines, then `defib playbook check {}`",
        out.display(),
        out.display()
    );
    Ok(())
}

/// `defib man`: defib(1) and a page per subcommand, named as git names
/// its pages (`defib-store-import.1`), so `man defib-build` works once
/// they are installed; the same for the rescue (`rescue-fix.1`).
fn cmd_man(out: &Path) -> Result<()> {
    fn write_pages(cmd: &clap::Command, name: &str, out: &Path, n: &mut usize) -> Result<()> {
        let page = cmd
            .clone()
            .name(name.to_string())
            .bin_name(name.replace('-', " "));
        let mut buf = Vec::new();
        clap_mangen::Man::new(page.clone())
            .render(&mut buf)
            .with_context(|| format!("rendering the man page of {name}"))?;
        let path = out.join(format!("{name}.1"));
        std::fs::write(&path, &buf).with_context(|| format!("writing {}", path.display()))?;
        *n += 1;
        for sub in cmd.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            write_pages(sub, &format!("{name}-{}", sub.get_name()), out, n)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut cmd = <Cli as clap::CommandFactory>::command();
    cmd.build();
    let mut n = 0;
    write_pages(&cmd, "defib", out, &mut n)?;
    // The rescue's host commands (rescue scan|fix|undo|probe), from its
    // own definitions.
    let mut rescue = <defib_rescue::cli::Cli as clap::CommandFactory>::command();
    rescue.build();
    write_pages(&rescue, "rescue", out, &mut n)?;
    println!("{n} man pages in {}", out.display());
    Ok(())
}

fn render_medium_store(st: &defib_builder::storesync::MediumStore) -> String {
    use defib_builder::fleet::term;
    if st.absent {
        return "  store: none on the medium\n".into();
    }
    let mut s = format!(
        "  store: {} entries, {} objects, {:.1} MiB, index sha256 {}; {}\n",
        st.entries,
        st.objects,
        st.bytes as f64 / (1u64 << 20) as f64,
        st.index_sha256.as_deref().unwrap_or("-"),
        match st.verified {
            None => "objects not verified (--verify-store reads them)".to_string(),
            Some(n) => format!("{n} of {} objects verified", st.objects),
        }
    );
    for p in &st.problems {
        s.push_str(&format!("    problem: {}\n", term(p)));
    }
    s
}

fn cmd_playbook_check(paths: Vec<PathBuf>) -> Result<()> {
    let paths = if paths.is_empty() {
        vec![PathBuf::from("payloads/playbooks")]
    } else {
        paths
    };
    let mut n = 0;
    for p in &paths {
        let pbs = if p.is_dir() {
            defib_rescue::playbook::load_dir(p)?
        } else {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            vec![defib_rescue::playbook::Playbook::parse(
                &text,
                &p.display().to_string(),
            )?]
        };
        for pb in pbs {
            let does = if pb.detect_only {
                "detect only".to_string()
            } else {
                format!("{} actions", pb.actions.len())
            };
            println!(
                "ok  {:<28} {} ({} conditions, {does})",
                pb.id,
                pb.title,
                pb.conditions.len(),
            );
            n += 1;
        }
    }
    println!("{n} playbook(s) valid");
    Ok(())
}

/// `defib reports`: the table (or CSV, JSON) on stdout; files and media
/// that were skipped are warnings on stderr, escaped for the terminal.
fn cmd_reports(c: ReportsConfig) -> Result<()> {
    use defib_builder::fleet;
    let f = fleet::gather(&c.sources);
    for w in &f.warnings {
        eprintln!("defib: warning: {}", fleet::term(w));
    }
    if let Some(out) = &c.html {
        let page = defib_builder::fleethtml::page(
            &f,
            &defib_rescue::runid::rfc3339(std::time::SystemTime::now()),
        );
        let tmp = out.with_extension("html.partial");
        std::fs::write(&tmp, page).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
        let need = defib_builder::fleethtml::machines_needing_a_person(&f);
        println!(
            "{}: {} machine(s), {} run(s), {need} needing a person",
            out.display(),
            fleet::latest_runs(&f.rows).len(),
            f.rows.len()
        );
        return Ok(());
    }
    if c.firmware {
        let rows = fleet::dedup_firmware(&f.firmware);
        if c.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            print!("{}", fleet::firmware_csv(&rows));
        }
    } else if c.keys_used {
        let uses = fleet::dedup_key_uses(&f.key_uses);
        if c.json {
            println!("{}", serde_json::to_string_pretty(&uses)?);
        } else {
            print!("{}", fleet::keys_used_csv(&uses));
        }
    } else if c.json {
        println!("{}", serde_json::to_string_pretty(&f.rows)?);
    } else if c.csv {
        print!("{}", fleet::csv(&f.rows));
    } else {
        print!("{}", fleet::table(&f));
    }
    // The table has its own summary line; CSV and JSON say it here.
    if (c.json || c.csv || c.keys_used || c.firmware) && f.skipped > 0 {
        eprintln!(
            "defib: {} file(s) skipped; see the warnings above",
            f.skipped
        );
    }
    Ok(())
}

/// `defib keys seal|check`. The passphrase comes from a file or the
/// terminal (twice when sealing); it is never echoed or printed.
fn cmd_keys(c: KeysCmd) -> Result<()> {
    use defib_rescue::passphrase;
    match c {
        KeysCmd::Seal {
            files,
            out,
            passphrase_file,
            work_factor,
            replace,
        } => {
            let pass = match &passphrase_file {
                Some(f) => passphrase::from_file(f)?,
                None => {
                    let a = passphrase::from_tty("Passphrase for the sealed key file: ")?;
                    let b = passphrase::from_tty("The same passphrase again: ")?;
                    if *a != *b {
                        bail!("the two passphrases differ; nothing written");
                    }
                    a
                }
            };
            let s = keys::seal_files(&files, &pass, work_factor, &out, replace)?;
            println!(
                "{}: {} recovery key(s) sealed ({} with a key ID), scrypt work factor {} ({} MiB to open)",
                out.display(),
                s.keys,
                s.keys - s.without_id,
                s.work_factor,
                defib_rescue::bitlocker::sealed::memory_for(s.work_factor) >> 20
            );
            println!(
                "copy it into the stick's keys folder, or: defib build --keys {}",
                out.display()
            );
        }
        KeysCmd::Check {
            sealed,
            passphrase_file,
            json,
        } => {
            let pass = match &passphrase_file {
                Some(f) => passphrase::from_file(f)?,
                None => passphrase::from_tty(&format!("Passphrase for {}: ", sealed.display()))?,
            };
            let s = keys::check(&sealed, &pass)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!(
                    "{}: {} recovery key(s), scrypt work factor {} ({} MiB to open)",
                    sealed.display(),
                    s.keys,
                    s.work_factor,
                    defib_rescue::bitlocker::sealed::memory_for(s.work_factor) >> 20
                );
                for id in &s.protector_ids {
                    println!("  {id}");
                }
                if s.without_id > 0 {
                    println!("  ({} key(s) without a key ID)", s.without_id);
                }
            }
        }
    }
    Ok(())
}

fn cmd_try(c: TryConfig) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("defib-try-{}", std::process::id()));
    let mut b = qemu::Boot::new(c.firmware, &scratch);
    // An .iso goes in as a CD-ROM, anything else as a USB stick.
    if c.image
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("iso"))
    {
        b.cdrom = Some(c.image.clone());
    } else {
        b.stick = Some(c.image.clone());
    }
    b.disks = c.disk.iter().map(|d| (d.clone(), c.bus)).collect();
    b.timeout = std::time::Duration::from_secs(c.timeout);
    eprintln!(
        "booting {} ({:?}); the serial console follows",
        c.image.display(),
        c.firmware
    );
    let out = qemu::run(&b);
    std::fs::remove_dir_all(&scratch).ok();
    let out = out?;
    print!("{}", out.text());
    if out.timed_out {
        anyhow::bail!("no power-off within {} s", c.timeout);
    }
    Ok(())
}

/// Manage the known-good store of Windows system files
#[derive(Subcommand, Debug)]
enum StoreCmd {
    /// Add files exported from a healthy reference machine
    Import(ImportConfig),
    /// List the store's entries
    List(ListConfig),
    /// Check every object's size and SHA-256; fail if anything is wrong
    Verify(VerifyConfig),
    /// Bring the store on a stick or image up to date from a store folder
    Sync(SyncConfig),
}

#[derive(Args, Debug)]
struct SyncConfig {
    /// The folder a defib stick is mounted on, the stick's block device,
    /// or an image file
    #[arg(value_name = "STICK|IMAGE")]
    target: PathBuf,
    /// The store folder to copy from
    #[arg(long, value_name = "DIR", default_value = "payloads/store")]
    store: PathBuf,
    /// Print a JSON summary on stdout
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ImportConfig {
    /// The zip (or unpacked folder) written by export-known-good.ps1
    #[arg(value_name = "FILE.zip|DIR")]
    input: PathBuf,
    /// The store folder
    #[arg(long, value_name = "DIR", default_value = "payloads/store")]
    store: PathBuf,
    /// Print a JSON summary on stdout
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ListConfig {
    /// The store folder
    #[arg(long, value_name = "DIR", default_value = "payloads/store")]
    store: PathBuf,
    /// Print the entries as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct VerifyConfig {
    /// The store folder
    #[arg(long, value_name = "DIR", default_value = "payloads/store")]
    store: PathBuf,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

/// `defib store …`: one store subcommand, printed for a person or as JSON.
fn store(cmd: StoreCmd) -> Result<()> {
    match cmd {
        StoreCmd::Import(c) => {
            let s = store::import(&c.input, &c.store)?;
            if c.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                // Warnings quote the export's manifest: escaped for the
                // terminal even though import refuses control characters.
                for w in &s.warnings {
                    eprintln!("defib: warning: {}", defib_builder::fleet::term(w));
                }
                println!(
                    "{}: {} build {}{} {}: {} file(s); {} new object(s), {} already there; \
                     {} new entr(ies), {} already there",
                    c.input.display(),
                    defib_builder::fleet::term(&s.product),
                    s.build,
                    s.ubr.map(|u| format!(".{u}")).unwrap_or_default(),
                    s.arch.as_str(),
                    s.files,
                    s.objects_added,
                    s.objects_present,
                    s.entries_added,
                    s.entries_present
                );
            }
            Ok(())
        }
        StoreCmd::Sync(c) => {
            let s = defib_builder::storesync::sync(&c.target, &c.store, None)?;
            if c.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!(
                    "{}: {} entries, {} objects: {} copied ({:.1} MiB, {} replacing corrupt copies), \
                     {} already there; index {} (sha256 {})",
                    c.target.display(),
                    s.entries,
                    s.objects,
                    s.objects_copied,
                    s.bytes_copied as f64 / (1u64 << 20) as f64,
                    s.objects_repaired,
                    s.objects_present,
                    if s.index_replaced { "replaced" } else { "unchanged" },
                    s.index_sha256
                );
            }
            Ok(())
        }
        StoreCmd::List(c) => {
            let st = Store::open(&c.store)?;
            if c.json {
                println!("{}", serde_json::to_string_pretty(&st.index.entries)?);
            } else {
                print!("{}", store::render_list(&st.index.entries));
            }
            Ok(())
        }
        StoreCmd::Verify(c) => {
            let st = Store::open(&c.store)?;
            let r = st.verify()?;
            if c.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{}: {} entries, {} objects, {} good",
                    r.root.display(),
                    r.entries,
                    r.objects,
                    r.objects_ok
                );
                for p in &r.problems {
                    println!("problem: {p}");
                }
                for o in &r.orphans {
                    println!("orphan: {OBJECTS_DIR}/{o} (no entry uses it; safe to delete)");
                }
            }
            if !r.is_clean() {
                bail!(
                    "store {} has {} problem(s) and {} orphan(s); re-import the exports or delete the orphans",
                    c.store.display(),
                    r.problems.len(),
                    r.orphans.len()
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Every help page, subcommands of subcommands included (`defib store
    /// import`, `defib playbook check`), fits an 80-column terminal.
    #[test]
    fn help_lines_fit_80_columns() {
        fn walk(cmd: &mut clap::Command, pages: &mut Vec<String>) {
            pages.push(cmd.render_long_help().to_string());
            for sub in cmd.get_subcommands_mut() {
                walk(sub, pages);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut pages = Vec::new();
        walk(&mut cmd, &mut pages);
        assert!(
            pages.len() > 10,
            "expected every subcommand's page, got {}",
            pages.len()
        );
        for t in pages {
            for line in t.lines() {
                assert!(
                    line.chars().count() <= 80,
                    "help line over 80 columns: {line:?}"
                );
            }
        }
    }
}
