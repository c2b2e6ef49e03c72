//! `defib reports`: one row per rescue run, gathered from used sticks
//! (image files or devices) and folders of report files, for the admin
//! who has to say which of 400 PCs are back.
//!
//! Reads reports as loose JSON so that reports from older or newer defib
//! versions still list; unreadable files become rows with an error.

use crate::image::UsbImage;
use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    /// Where the report was found: `<source>:<file>`.
    pub source: String,
    pub run_id: String,
    pub finished: String,
    pub serial: String,
    pub uuid: String,
    pub computer: String,
    pub windows: String,
    pub verdict: String,
    /// Actions done (files moved, restored, placed).
    pub changes: usize,
    pub reason: String,
}

fn s(v: &Value, path: &[&str]) -> String {
    let mut cur = v;
    for k in path {
        cur = &cur[*k];
    }
    match cur {
        Value::String(x) => x.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

/// A row from one report.
pub fn row(source: String, r: &Value) -> Row {
    let wins = r["windows"].as_array().cloned().unwrap_or_default();
    let computer = wins
        .iter()
        .map(|w| s(w, &["identity", "computer_name"]))
        .filter(|x| !x.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let windows = wins
        .iter()
        .filter(|w| !w["identity"].is_null())
        .map(|w| {
            format!(
                "{} {}",
                s(w, &["identity", "product_name"]),
                s(w, &["identity", "build"])
            )
            .trim()
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("; ");
    let changes = wins
        .iter()
        .flat_map(|w| w["playbooks"].as_array().cloned().unwrap_or_default())
        .flat_map(|p| p["actions"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["status"] == "done")
        .count();
    let reason = wins
        .iter()
        .find(|w| w["verdict"] == r["verdict"])
        .map(|w| s(w, &["reason"]))
        .unwrap_or_default();
    Row {
        source,
        run_id: s(r, &["run_id"]),
        finished: s(r, &["finished"]),
        serial: s(r, &["machine", "product_serial"]),
        uuid: s(r, &["machine", "product_uuid"]),
        computer,
        windows,
        verdict: s(r, &["verdict"]),
        changes,
        reason,
    }
}

fn error_row(source: String, e: String) -> Row {
    Row {
        source,
        run_id: String::new(),
        finished: String::new(),
        serial: String::new(),
        uuid: String::new(),
        computer: String::new(),
        windows: String::new(),
        verdict: "unreadable".into(),
        changes: 0,
        reason: e,
    }
}

/// Every report under the given images, devices and folders.
pub fn collect(sources: &[PathBuf]) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for src in sources {
        if src.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(src)
                .with_context(|| format!("reading {}", src.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|x| x.eq_ignore_ascii_case("json"))
                })
                .collect();
            files.sort();
            for f in files {
                let name = f.display().to_string();
                match std::fs::read(&f)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|e| e.to_string()))
                {
                    Ok(v) => rows.push(row(name, &v)),
                    Err(e) => rows.push(error_row(name, e)),
                }
            }
        } else {
            let img = UsbImage::open(src)?;
            for r in crate::inspect::reports(&img)? {
                let name = format!("{}:{}", src.display(), r.name);
                match r.error {
                    Some(e) => rows.push(error_row(name, e)),
                    None => rows.push(row(name, &r.report)),
                }
            }
        }
    }
    Ok(rows)
}

fn csv_field(f: &str) -> String {
    if f.contains([',', '"', '\n']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f.to_string()
    }
}

/// RFC 4180 CSV with a header line.
pub fn csv(rows: &[Row]) -> String {
    let mut out = String::from(
        "run_id,finished,serial,uuid,computer,windows,verdict,changes,reason,source\n",
    );
    for r in rows {
        let f = [
            &r.run_id,
            &r.finished,
            &r.serial,
            &r.uuid,
            &r.computer,
            &r.windows,
            &r.verdict,
            &r.changes.to_string(),
            &r.reason,
            &r.source,
        ];
        out.push_str(&f.iter().map(|x| csv_field(x)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

/// A table for the terminal, with a count per verdict at the end.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<18} {:<16} {:<24} {:<17} {:>3}  {}\n",
        "FINISHED", "COMPUTER", "WINDOWS", "VERDICT", "CHG", "MACHINE"
    );
    for r in rows {
        let machine = if r.serial.is_empty() {
            &r.uuid
        } else {
            &r.serial
        };
        out.push_str(&format!(
            "{:<18} {:<16} {:<24} {:<17} {:>3}  {}\n",
            r.finished.get(..16).unwrap_or(&r.finished),
            r.computer,
            r.windows.chars().take(24).collect::<String>(),
            r.verdict,
            r.changes,
            machine
        ));
    }
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for r in rows {
        *counts.entry(r.verdict.as_str()).or_default() += 1;
    }
    out.push_str(&format!(
        "{} reports: {}\n",
        rows.len(),
        counts
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out
}

/// For tests and callers that already hold a path.
pub fn collect_one(p: &Path) -> Result<Vec<Row>> {
    collect(&[p.to_path_buf()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_from_a_folder_with_a_bad_file() {
        let d = tempfile::tempdir().unwrap();
        let rep = serde_json::json!({
            "schema": 1, "run_id": "20261126T050215Z-1a2b3c4d", "finished": "2026-11-26T05:02:21Z",
            "machine": {"product_serial": "SN1", "product_uuid": "u"},
            "verdict": "repaired",
            "windows": [{"identity": {"computer_name": "WARD3-PC07", "product_name": "Microsoft Windows XP", "build": 2600},
                         "verdict": "repaired", "reason": "repaired: mcafee-dat-5958",
                         "playbooks": [{"actions": [{"status": "done"}, {"status": "skipped"}, {"status": "done"}]}]}]
        });
        std::fs::write(d.path().join("a.json"), serde_json::to_vec(&rep).unwrap()).unwrap();
        std::fs::write(d.path().join("b.json"), b"{ torn").unwrap();
        let rows = collect_one(d.path()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].computer, "WARD3-PC07");
        assert_eq!(rows[0].windows, "Microsoft Windows XP 2600");
        assert_eq!(rows[0].changes, 2);
        assert_eq!(rows[1].verdict, "unreadable");
        let t = table(&rows);
        assert!(t.contains("2 reports: 1 repaired, 1 unreadable"), "{t}");
        let c = csv(&rows);
        assert_eq!(c.lines().count(), 3);
        assert!(
            c.lines()
                .nth(1)
                .unwrap()
                .contains(",repaired,2,repaired: mcafee-dat-5958,"),
            "{c}"
        );
    }
}
