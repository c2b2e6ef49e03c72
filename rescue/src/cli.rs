//! The rescue's command line (host mode), in the library so that the
//! builder can render its man pages (`defib man`) from the same
//! definitions the binary parses with.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// defib's rescue. As /init in the defib image it runs unattended and takes
/// its settings from the kernel command line (defib.mode=, defib.after=).
/// On a Linux host it scans, repairs or undoes a repair of a Windows volume.
#[derive(Parser)]
#[command(name = "rescue", version, max_term_width = 80)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Report what the playbooks find; change nothing
    Scan(RunArgs),
    /// Repair what the playbooks find (journalled, backed up, verified)
    Fix(FixArgs),
    /// Put a volume back as it was before a run
    Undo(UndoArgs),
    /// List this host's disks and filesystems as JSON
    Probe,
}

#[derive(Args)]
pub struct RunArgs {
    /// A mounted Windows volume (or a folder shaped like one)
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "device",
        required_unless_present = "device"
    )]
    pub root: Option<PathBuf>,
    /// A disk or partition to detect and mount with ntfs3 (needs root);
    /// the EFI system partition on the same disk is found and mounted too
    #[arg(long, value_name = "DEV")]
    pub device: Option<String>,
    /// With --root: the mounted EFI system partition (or BIOS active
    /// partition) holding the BCD store [default: none; then only
    /// \Boot\BCD on the volume itself is looked at]
    #[arg(long, value_name = "DIR", conflicts_with = "device")]
    pub esp: Option<PathBuf>,
    /// Playbooks and store [default: /payloads in the image, else ./payloads]
    #[arg(long, value_name = "DIR")]
    pub payloads: Option<PathBuf>,
    /// A BitLocker recovery password for --device (48 digits; better: a
    /// key file, which keeps it out of shell history)
    #[arg(long, value_name = "DIGITS")]
    pub recovery_password: Option<String>,
    /// BitLocker key files for --device: CSV exports, the .TXT Windows
    /// saves, .BEK startup keys, files sealed by `defib keys seal`
    /// (repeatable)
    #[arg(long, value_name = "FILE")]
    pub key_file: Vec<PathBuf>,
    /// BitLocker startup keys for --device: the .BEK files Windows writes
    /// to a USB stick (repeatable; --key-file takes them too)
    #[arg(long, value_name = "FILE.BEK")]
    pub startup_key: Vec<PathBuf>,
    /// The password of a BitLocker data or To Go volume for --device, on
    /// the file's first line
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// The passphrase of sealed --key-file files, on the file's first
    /// line [default: asked on the terminal]
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// The one installation to work on when a volume holds several
    /// (its Windows folder, e.g. WINDOWS or Windows.old)
    #[arg(long, value_name = "DIR")]
    pub windows: Option<String>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct FixArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Plan the repair and report it; change nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args)]
pub struct UndoArgs {
    /// The mounted Windows volume the run changed
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// The mounted EFI system partition, when the run edited the BCD
    /// store on it
    #[arg(long, value_name = "DIR")]
    pub esp: Option<PathBuf>,
    /// Which run [default: the latest not yet undone]
    #[arg(long, value_name = "RUN_ID")]
    pub run: Option<String>,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}
