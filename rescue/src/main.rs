//! `rescue`: PID 1 of the defib rescue image, and a host tool for a
//! Windows volume attached to any Linux machine.

use clap::Parser;
use defib_rescue::cli::{Cli, Cmd, RunArgs, UndoArgs};
use defib_rescue::engine::Mode;
use defib_rescue::host::{self, Target};
use std::process::ExitCode;

fn main() -> ExitCode {
    defib_rescue::journal::fault_from_env();
    if rustix::process::getpid().is_init() {
        defib_rescue::pid1::main();
    }
    // busybox udhcpc runs the rescue as its script, through a symlink.
    let mut argv = std::env::args();
    if argv
        .next()
        .is_some_and(|a| a.ends_with(defib_rescue::pid1::net::HOOK_NAME))
    {
        let event = argv.next().unwrap_or_default();
        let code = defib_rescue::pid1::net::udhcpc_hook(&event, std::path::Path::new("/"));
        return ExitCode::from(code as u8);
    }
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Scan(a) => run(a, Mode::Scan),
        Cmd::Fix(f) => run(f.run, if f.dry_run { Mode::Scan } else { Mode::Fix }),
        Cmd::Undo(u) => undo(u),
        Cmd::Probe => probe(),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rescue: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(a: RunArgs, mode: Mode) -> anyhow::Result<ExitCode> {
    let target = match (a.root, a.device) {
        (Some(r), _) => Target::Root(r, a.esp),
        (None, Some(d)) => Target::Device(d),
        (None, None) => anyhow::bail!("give --root DIR or --device DEV"),
    };
    let payloads = a.payloads.unwrap_or_else(host::default_payloads);
    let mut keys = defib_rescue::bitlocker::keyfile::KeyStore::default();
    for f in &a.key_file {
        keys.add_file(f)
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", f.display()))?;
    }
    if !keys.sealed.is_empty() {
        open_sealed(&mut keys, a.passphrase_file.as_deref())?;
    } else if a.passphrase_file.is_some() {
        anyhow::bail!("--passphrase-file given, but no --key-file is sealed");
    }
    for f in &a.startup_key {
        let bytes = read_small(f, 64 << 10)?;
        keys.add_bek(&bytes, &f.display().to_string())
            .map_err(|e| {
                anyhow::anyhow!(
                    "--startup-key {}: {e:#}; give the .BEK file Windows saved",
                    f.display()
                )
            })?;
    }
    if let Some(f) = &a.password_file {
        let pw = defib_rescue::passphrase::from_file(f)
            .map_err(|e| anyhow::anyhow!("--password-file: {e:#}"))?;
        keys.add_password(&pw, "password-file");
    }
    if let Some(rp) = &a.recovery_password {
        if keys.add_recovery_text(&format!("Recovery Key: {rp}\n"), "typed") == 0 {
            anyhow::bail!("--recovery-password: not 8 groups of 6 digits, each divisible by 11");
        }
    }
    let rep = host::run(&target, &payloads, mode, a.windows.as_deref(), keys)?;
    if a.json {
        println!("{}", String::from_utf8_lossy(&rep.to_json()?));
    } else {
        print!("{}", defib_rescue::report::render_text(&rep));
    }
    // Exit status for scripts: 0 repaired/clean, 1 needs attention, 3 no Windows.
    Ok(match rep.verdict {
        defib_rescue::report::Verdict::Repaired | defib_rescue::report::Verdict::Clean => {
            ExitCode::SUCCESS
        }
        defib_rescue::report::Verdict::NoWindowsFound => ExitCode::from(3),
        _ => ExitCode::from(1),
    })
}

/// A small file whole, refusing one larger than `max` bytes.
fn read_small(path: &std::path::Path, max: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    anyhow::ensure!(
        bytes.len() as u64 <= max,
        "{}: larger than {max} bytes, not a key file",
        path.display()
    );
    Ok(bytes)
}

/// Opens the sealed --key-file files with the passphrase from the file,
/// or typed on the terminal (three tries). Host mode asks up front: the
/// admin gave the files to be used.
fn open_sealed(
    keys: &mut defib_rescue::bitlocker::keyfile::KeyStore,
    passphrase_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use defib_rescue::bitlocker::sealed::{max_work_factor_here, SealError};
    let names: Vec<String> = keys.sealed.iter().map(|f| f.name.clone()).collect();
    let (max, _) = max_work_factor_here(std::path::Path::new("/"));
    let tries = if passphrase_file.is_some() { 1 } else { 3 };
    for attempt in 1..=tries {
        let pass = match passphrase_file {
            Some(f) => defib_rescue::passphrase::from_file(f)?,
            None => defib_rescue::passphrase::from_tty(&format!(
                "Passphrase for {}: ",
                names.join(", ")
            ))?,
        };
        let results = keys.open_sealed(&pass, max);
        drop(pass);
        if results
            .iter()
            .all(|(_, r)| *r == Err(SealError::WrongPassphrase))
        {
            if attempt < tries {
                eprintln!("rescue: that passphrase opens none of them; try again");
            }
            continue;
        }
        let mut opened = false;
        for (name, r) in results {
            match r {
                Ok(n) => {
                    opened = true;
                    eprintln!("rescue: {name}: {n} key(s)");
                }
                Err(e) => eprintln!("rescue: {name}: {e}"),
            }
        }
        anyhow::ensure!(opened, "no sealed key file opened");
        return Ok(());
    }
    anyhow::bail!(
        "the passphrase opens none of the sealed key files ({})",
        names.join(", ")
    )
}

fn undo(u: UndoArgs) -> anyhow::Result<ExitCode> {
    let r = host::undo(&u.root, u.esp.as_deref(), u.run.as_deref())?;
    if u.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("undo of run {}:", r.run_id);
        for p in &r.restored {
            println!("  put back {p}");
        }
        for p in &r.problems {
            println!("  PROBLEM: {p}");
        }
    }
    Ok(if r.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Probes the host read-only and prints its volumes; unreadable devices
/// (not root, empty drives) are listed on stderr.
fn probe() -> anyhow::Result<ExitCode> {
    let p = defib_rescue::probe::probe(std::path::Path::new("/"), None);
    for m in &p.messages {
        eprintln!("rescue: {m}");
    }
    println!("{}", serde_json::to_string_pretty(&p.volumes)?);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed_and_fits_80_columns() {
        Cli::command().debug_assert();
        let mut cmd = Cli::command();
        let mut texts = vec![cmd.render_long_help().to_string()];
        for sub in cmd.get_subcommands_mut() {
            texts.push(sub.render_long_help().to_string());
        }
        for t in texts {
            for line in t.lines() {
                assert!(
                    line.chars().count() <= 80,
                    "help line over 80 columns: {line:?}"
                );
            }
        }
    }
}
