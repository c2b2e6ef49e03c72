//! The CLI as an admin's shell meets it: completion scripts that load,
//! man pages that render, and a playbook template that passes the same
//! check the image build runs.

use std::path::Path;
use std::process::Command;

fn defib(args: &[&str], cwd: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_defib"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("running defib")
}

fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).expect("utf-8")
}

#[test]
fn bash_completion_loads_and_completes_subcommands() {
    let d = tempfile::tempdir().unwrap();
    let script = ok(&defib(&["completions", "bash"], d.path()));
    let f = d.path().join("defib.bash");
    std::fs::write(&f, &script).unwrap();
    let syntax = Command::new("bash").arg("-n").arg(&f).status().unwrap();
    assert!(syntax.success(), "bash -n refused the completion script");
    // Loaded, it registers for defib and offers the subcommands for
    // `defib st<TAB>` and the store's for `defib store <TAB>`.
    let probe = format!(
        r#"source {f}
complete -p defib || exit 3
COMP_WORDS=(defib st); COMP_CWORD=1; COMP_LINE="defib st"; COMP_POINT=${{#COMP_LINE}}
_defib defib st defib; echo "top: ${{COMPREPLY[*]}}"
COMP_WORDS=(defib store ""); COMP_CWORD=2; COMP_LINE="defib store "; COMP_POINT=${{#COMP_LINE}}
_defib defib "" store; echo "store: ${{COMPREPLY[*]}}"
"#,
        f = f.display()
    );
    let o = Command::new("bash").arg("-c").arg(&probe).output().unwrap();
    let out = ok(&o);
    assert!(out.contains("complete") && out.contains(" defib"), "{out}");
    let top = out.lines().find(|l| l.starts_with("top:")).unwrap();
    assert!(top.contains("store"), "{top}");
    let store = out.lines().find(|l| l.starts_with("store:")).unwrap();
    for sub in ["import", "list", "verify"] {
        assert!(store.contains(sub), "{store}");
    }
}

#[test]
fn every_shell_gets_a_script_and_a_wrong_one_is_refused() {
    let d = tempfile::tempdir().unwrap();
    for sh in ["zsh", "fish", "elvish", "powershell"] {
        let s = ok(&defib(&["completions", sh], d.path()));
        assert!(s.contains("defib") && s.contains("store"), "{sh}");
    }
    let o = defib(&["completions", "tcsh"], d.path());
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("possible values"));
}

#[test]
fn a_man_page_per_subcommand_renders() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("man");
    ok(&defib(&["man", "--out", out.to_str().unwrap()], d.path()));
    let mut written: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".1")
                .to_string()
        })
        .collect();
    written.sort();
    // Every subcommand `defib --help` lists has its page.
    let help = ok(&defib(&["--help"], d.path()));
    let subs: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        // "  name  What it does"; wrapped text is indented further.
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| *w != "help")
        .collect();
    assert!(subs.len() >= 10, "{help}");
    for s in &subs {
        assert!(
            written.contains(&format!("defib-{s}")),
            "no page for {s}: {written:?}"
        );
    }
    for nested in [
        "defib-store-import",
        "defib-playbook-check",
        "defib-playbook-new",
    ] {
        assert!(written.contains(&nested.to_string()), "{written:?}");
    }
    for name in &written {
        let page = out.join(format!("{name}.1"));
        let o = Command::new("man")
            .arg("-l")
            .arg(&page)
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0")
            .env("PAGER", "cat")
            .output()
            .expect("man (scripts/setup --test installs man-db)");
        // man formats for a terminal even into a pipe: drop the overstrikes
        // (char, backspace) it uses for bold and underline.
        let mut text = String::new();
        for c in ok(&o).chars() {
            if c == '\u{8}' {
                text.pop();
            } else {
                text.push(c);
            }
        }
        assert!(
            text.contains("NAME") && text.contains("SYNOPSIS"),
            "{name}:\n{text}"
        );
        assert!(text.contains(name.as_str()), "{name}:\n{text}");
    }
}

#[test]
fn playbook_template_passes_check_and_is_never_written_over() {
    let d = tempfile::tempdir().unwrap();
    let o = ok(&defib(
        &["playbook", "new", "acme-av-2026-11", "--date", "2026-11-20"],
        d.path(),
    ));
    assert!(o.contains("acme-av-2026-11.toml"), "{o}");
    let f = d.path().join("acme-av-2026-11.toml");
    let text = std::fs::read_to_string(&f).unwrap();
    assert!(text.contains("date = \"2026-11-20\""), "{text}");
    let check = ok(&defib(
        &["playbook", "check", f.to_str().unwrap()],
        d.path(),
    ));
    assert!(check.contains("ok  acme-av-2026-11"), "{check}");
    // A second run must not replace the edited file.
    std::fs::write(&f, "edited").unwrap();
    let again = defib(&["playbook", "new", "acme-av-2026-11"], d.path());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwritten"));
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "edited");
    // A name the parser would refuse is refused before anything is written.
    let bad = defib(&["playbook", "new", "Acme_AV"], d.path());
    assert!(!bad.status.success());
    assert!(!d.path().join("Acme_AV.toml").exists());
}

/// Key files for a stick given to a network tree are refused, not dropped
/// (a PC would sit at its recovery prompt); the message names the way.
#[test]
fn stick_keys_for_a_network_boot_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.csv");
    std::fs::write(&keys, "x").unwrap();
    let o = defib(
        &[
            "pxe",
            "--offline",
            "--out",
            "tree",
            "--keys",
            keys.to_str().unwrap(),
        ],
        dir.path(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("--keys carries key files on a USB stick"),
        "{err}"
    );
    assert!(err.contains("--keys-url"), "{err}");
    assert!(!dir.path().join("tree").exists(), "nothing written");
}
