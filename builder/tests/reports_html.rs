//! `defib reports DIR --html FILE` read back in a real browser: Debian's
//! Chromium, headless, renders the page; its DOM must show the counts by
//! verdict, the machines that need a person ahead of the rest, a hostile
//! computer name as text (never markup), and a machine's report appearing
//! when its link is followed. The screenshots are kept in the target
//! folder for a person to look at.

mod common;

use common::env_file;
use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium() -> PathBuf {
    let p = PathBuf::from("/usr/bin/chromium");
    assert!(
        p.is_file(),
        "/usr/bin/chromium is missing: install Debian's chromium (scripts/setup --test does)"
    );
    p
}

fn report(n: u32, computer: &str, verdict: &str, reason: &str) -> serde_json::Value {
    serde_json::json!({
        "schema": defib_rescue::report::SCHEMA,
        "run_id": format!("20261129T0600{n:02}Z-0000000{n}"),
        "finished": format!("2026-11-29T06:00:{n:02}Z"),
        "machine": {"product_serial": format!("SN-{n:04}"), "product_uuid": format!("uuid-{n}")},
        "verdict": verdict,
        "windows": [{
            "identity": {"computer_name": computer, "product_name": "Windows 10 Enterprise", "build": "19045"},
            "verdict": verdict,
            "reason": reason,
            "playbooks": [],
        }],
    })
}

/// Runs headless Chromium with `args` on `url`; its stdout.
fn browse(profile: &Path, args: &[&str], url: &str) -> String {
    let o = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("running chromium");
    assert!(
        o.status.success(),
        "chromium {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn png_size(p: &Path) -> (u32, u32) {
    let b = std::fs::read(p).unwrap();
    assert_eq!(
        &b[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        p.display()
    );
    let be = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

#[test]
#[ignore = "runs Chromium: run through scripts/test"]
fn the_fleet_page_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let reports = dir.path().join("reports");
    std::fs::create_dir_all(&reports).unwrap();
    let fleet = [
        report(1, "WARD3-PC07", "repaired", "repaired: mcafee-dat-5958"),
        report(
            2,
            "ICU-STATION-12",
            "repaired",
            "repaired: crowdstrike-c00000291",
        ),
        report(
            3,
            "PHARMACY-03",
            "needs-attention",
            "BitLocker: no key for protector 1f2e…; bring the recovery key",
        ),
        report(
            4,
            "<img src=x onerror=alert(1)>",
            "failed",
            "the disk returned I/O errors",
        ),
        report(5, "RECEPTION-02", "repaired", "repaired: avg-user32-2008"),
        // RECEPTION-02's first try, which failed: its later run counts.
        {
            let mut r = report(0, "RECEPTION-02", "failed", "the volume was dirty");
            r["machine"] =
                serde_json::json!({"product_serial": "SN-0005", "product_uuid": "uuid-5"});
            r
        },
    ];
    for (i, r) in fleet.iter().enumerate() {
        std::fs::write(reports.join(format!("pc{i}.json")), r.to_string()).unwrap();
    }
    std::fs::write(reports.join("junk.json"), "{\"not\": \"a report\"}").unwrap();
    let page = dir.path().join("fleet.html");
    let o = Command::new(env_file("DEFIB_DEFIB"))
        .args(["reports", "--html"])
        .arg(&page)
        .arg(&reports)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!(
            "{}: 5 machine(s), 6 run(s), 2 needing a person",
            page.display()
        )
    );

    let profile = dir.path().join("profile");
    let url = format!("file://{}", page.display());
    let dom = browse(&profile, &["--dump-dom"], &url);
    for card in [
        "<b>3</b>repaired</div>",
        "<b>1</b>needs-attention</div>",
        "<b>1</b>failed</div>",
    ] {
        assert!(dom.contains(card), "{card} missing:\n{dom}");
    }
    assert!(dom.contains("1 file(s) skipped"), "{dom}");
    assert!(dom.contains("5 machine(s) · 6 run(s)"), "{dom}");
    // The superseded failed run is listed, greyed and marked.
    let earlier = dom.find("<tr class=\"earlier\">").expect("an earlier run");
    assert!(
        dom[earlier..]
            .split("</tr>")
            .next()
            .unwrap()
            .contains("RECEPTION-02"),
        "{dom}"
    );
    // The hostile name stayed text: no element came of it.
    assert!(!dom.contains("<img"), "{dom}");
    assert!(dom.contains("&lt;img src=x onerror=alert(1)&gt;"), "{dom}");
    // Needs a person: the failed PC, then the one needing attention, and
    // none of the repaired ones, all before the full list.
    let att = dom.find("id=\"attention\"").unwrap();
    let all = dom.find("id=\"all\"").unwrap();
    let section = &dom[att..all];
    let failed = section.find("onerror").unwrap();
    let pharmacy = section.find("PHARMACY-03").unwrap();
    assert!(failed < pharmacy, "{section}");
    assert!(section.contains("bring the recovery key"), "{section}");
    for repaired in ["WARD3-PC07", "ICU-STATION-12", "RECEPTION-02"] {
        assert!(!section.contains(repaired), "{section}");
    }

    // Screenshots: the page, and the page with PHARMACY-03's report
    // opened by its link (the :target section becomes visible).
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let link = section[..pharmacy]
        .rfind("href=\"#")
        .map(|i| &section[i + 7..])
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    let mut sizes = Vec::new();
    for (name, u) in [
        ("fleet.png", url.clone()),
        ("fleet-report.png", format!("{url}#{link}")),
    ] {
        let shot = shots.join(name);
        let _ = std::fs::remove_file(&shot);
        browse(
            &profile,
            &[
                &format!("--screenshot={}", shot.display()),
                "--window-size=1280,1400",
            ],
            &u,
        );
        assert_eq!(png_size(&shot), (1280, 1400));
        eprintln!("screenshot: {}", shot.display());
        sizes.push(std::fs::read(&shot).unwrap());
    }
    assert_ne!(
        sizes[0], sizes[1],
        "following a machine's link changed nothing on screen"
    );
}
