//! `rescue`: PID 1 of the defib rescue image, and a small host tool.

use std::process::ExitCode;

const USAGE: &str = "\
usage: rescue --version
       rescue probe      list this host's disks and filesystems as JSON

As /init in the defib image (PID 1) it runs the rescue and takes its
settings from the kernel command line (defib.mode=, defib.after=, ...).";

fn main() -> ExitCode {
    if rustix::process::getpid().is_init() {
        defib_rescue::init::main();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["--version"] | ["-V"] => {
            println!("rescue {}", defib_rescue::VERSION);
            ExitCode::SUCCESS
        }
        ["probe"] => probe(),
        ["--help"] | ["-h"] | ["help"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Probes the host read-only and prints its volumes; unreadable devices
/// (not root, empty drives) are listed on stderr.
fn probe() -> ExitCode {
    let p = defib_rescue::probe::probe(std::path::Path::new("/"), None);
    for m in &p.messages {
        eprintln!("rescue: {m}");
    }
    match serde_json::to_string_pretty(&p.volumes) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rescue: serializing volumes: {e}");
            ExitCode::from(2)
        }
    }
}
