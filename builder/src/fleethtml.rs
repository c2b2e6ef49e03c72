//! `defib reports --html FILE`: one self-contained page of the fleet for
//! the person who has to say how many PCs are back: counts by verdict, the
//! machines that need a person first (with why), then every run, each
//! machine's whole report one click away (CSS `:target`, no script).
//!
//! Not a dashboard: no JavaScript, no external fonts, styles or images, so
//! the file can be mailed or opened from a stick. Every string from a
//! report is shown through [`fleet::term`] (control and bidi characters
//! escaped) and then HTML-escaped.

use crate::fleet::{self, Fleet, Row};

/// The order a person should look at verdicts in: what needs hands first.
pub fn priority(verdict: &str) -> u8 {
    match verdict {
        "failed" => 0,
        "needs-attention" => 1,
        "no-windows-found" => 2,
        "repaired" => 3,
        "clean" => 4,
        _ => 5,
    }
}

/// Whether a verdict means someone has to go to that PC.
pub fn needs_person(verdict: &str) -> bool {
    priority(verdict) <= 2
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in fleet::term(s).chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// Like [`esc`] for multi-line text (the pretty JSON): line breaks kept.
fn esc_block(s: &str) -> String {
    s.lines().map(esc).collect::<Vec<_>>().join("\n")
}

fn dash(s: &str) -> String {
    if s.trim().is_empty() {
        "—".into()
    } else {
        esc(s)
    }
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem;color:#1d1d1f;background:#fafafa}\
h1{margin:0 0 .2rem}p.sub{color:#666;margin:0 0 1.5rem}\
.cards{display:flex;gap:1rem;flex-wrap:wrap;margin-bottom:2rem}\
.card{background:#fff;border-radius:10px;padding:1rem 1.4rem;min-width:9rem;box-shadow:0 1px 3px #0002;border-top:6px solid #999}\
.card b{display:block;font-size:2.4rem}\
.v-failed{border-color:#b00020}.v-needs-attention{border-color:#e07000}.v-no-windows-found{border-color:#c9a400}\
.v-repaired{border-color:#1b873f}.v-clean{border-color:#2d6cdf}\
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 3px #0002;margin-bottom:2rem}\
th,td{text-align:left;padding:.45rem .7rem;border-bottom:1px solid #eee;vertical-align:top}\
th{background:#f0f0f3}td:nth-child(3){white-space:nowrap}\
span.v{display:inline-block;padding:.1rem .5rem;border-radius:1rem;color:#fff;font-size:.85rem;white-space:nowrap;background:#777}\
span.v-failed{background:#b00020}span.v-needs-attention{background:#e07000}span.v-no-windows-found{background:#a08200}\
span.v-repaired{background:#1b873f}span.v-clean{background:#2d6cdf}\
section.report{display:none;background:#fff;padding:1rem;box-shadow:0 1px 3px #0002;margin-bottom:2rem}\
section.report:target{display:block}\
pre{white-space:pre-wrap;word-break:break-all;font-size:.8rem}\
.ok{color:#1b873f}tr.earlier td{color:#888}tr.earlier span.v{opacity:.55}";

fn verdict_badge(v: &str) -> String {
    let class: String = v
        .chars()
        .filter(|c| c.is_ascii_lowercase() || *c == '-')
        .collect();
    format!("<span class=\"v v-{class}\">{}</span>", dash(v))
}

fn row_html(i: usize, r: &Row, with_why: bool, earlier: bool) -> String {
    let name = if r.computer.trim().is_empty() {
        "(no Windows name)".to_string()
    } else {
        r.computer.clone()
    };
    let mut s = format!(
        "<tr{}><td><a href=\"#m{i}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td>",
        if earlier { " class=\"earlier\"" } else { "" },
        esc(&name),
        verdict_badge(&r.verdict),
        dash(&r.serial),
        dash(&r.windows),
    );
    if with_why {
        s.push_str(&format!("<td>{}</td>", dash(&r.reason)));
    } else {
        s.push_str(&format!(
            "<td>{}</td><td>{}{}</td>",
            r.changes,
            dash(&r.finished),
            if earlier {
                " <small>(a later run on this machine counts)</small>"
            } else {
                ""
            }
        ));
    }
    s.push_str("</tr>\n");
    s
}

/// How many machines need a person: those whose latest run does.
pub fn machines_needing_a_person(f: &Fleet) -> usize {
    crate::fleet::latest_runs(&f.rows)
        .into_iter()
        .filter(|&i| needs_person(&f.rows[i].verdict))
        .count()
}

/// The page. `generated` is shown as is (the caller's clock). The counts
/// and "Needs a person" are per machine, from its latest run (a PC that
/// failed, then was repaired on a second try, is repaired); "Every run"
/// lists them all.
pub fn page(f: &Fleet, generated: &str) -> String {
    let latest = crate::fleet::latest_runs(&f.rows);
    let mut order: Vec<usize> = (0..f.rows.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&f.rows[a], &f.rows[b]);
        (priority(&x.verdict), &x.computer, &x.finished).cmp(&(
            priority(&y.verdict),
            &y.computer,
            &y.finished,
        ))
    });
    let is_latest = |i: usize| latest.binary_search(&i).is_ok();
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for &i in order.iter().filter(|&&i| is_latest(i)) {
        let v = f.rows[i].verdict.as_str();
        match counts.iter_mut().find(|(k, _)| *k == v) {
            Some(c) => c.1 += 1,
            None => counts.push((v, 1)),
        }
    }
    let need: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| is_latest(i) && needs_person(&f.rows[i].verdict))
        .collect();
    let mut s = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width\">\n\
         <title>defib fleet report</title>\n<style>",
    );
    s.push_str(STYLE);
    s.push_str("</style></head><body>\n<h1>defib fleet report</h1>\n");
    s.push_str(&format!(
        "<p class=\"sub\">{} machine(s) · {} run(s) · generated {}{}</p>\n",
        latest.len(),
        f.rows.len(),
        esc(generated),
        if f.skipped > 0 {
            format!(" · {} file(s) skipped, not defib reports", f.skipped)
        } else {
            String::new()
        }
    ));
    s.push_str("<div class=\"cards\" id=\"counts\">\n");
    for (v, n) in &counts {
        let class: String = v
            .chars()
            .filter(|c| c.is_ascii_lowercase() || *c == '-')
            .collect();
        s.push_str(&format!(
            "<div class=\"card v-{class}\"><b>{n}</b>{}</div>\n",
            esc(v)
        ));
    }
    s.push_str("</div>\n<h2 id=\"attention\">Needs a person</h2>\n");
    if need.is_empty() {
        s.push_str("<p class=\"ok\">None: every machine was repaired or found clean.</p>\n");
    } else {
        s.push_str(
            "<table><tr><th>machine</th><th>verdict</th><th>serial</th><th>Windows</th>\
             <th>why</th></tr>\n",
        );
        for &i in &need {
            s.push_str(&row_html(i, &f.rows[i], true, false));
        }
        s.push_str("</table>\n");
    }
    s.push_str(
        "<h2 id=\"all\">Every run</h2>\n<table><tr><th>machine</th><th>verdict</th>\
         <th>serial</th><th>Windows</th><th>changes</th><th>finished</th></tr>\n",
    );
    for &i in &order {
        s.push_str(&row_html(i, &f.rows[i], false, !is_latest(i)));
    }
    s.push_str("</table>\n");
    for &i in &order {
        let r = &f.rows[i];
        let json = f
            .reports
            .get(i)
            .and_then(|v| serde_json::to_string_pretty(v).ok())
            .unwrap_or_default();
        s.push_str(&format!(
            "<section class=\"report\" id=\"m{i}\"><h3>{} · {}</h3>\
             <p>run {} · UUID {} · from {}</p><pre>{}</pre>\
             <p><a href=\"#all\">back to the list</a></p></section>\n",
            dash(&r.computer),
            verdict_badge(&r.verdict),
            dash(&r.run_id),
            dash(&r.uuid),
            dash(&r.source),
            esc_block(&json)
        ));
    }
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(computer: &str, verdict: &str) -> Row {
        Row {
            source: "r:x.json".into(),
            run_id: "run".into(),
            finished: "2026-01-01T00:00:00Z".into(),
            serial: "SN".into(),
            uuid: format!("u-{computer}"),
            computer: computer.into(),
            windows: "Windows 10 19045".into(),
            verdict: verdict.into(),
            changes: 1,
            reason: format!("{verdict}: because"),
        }
    }

    #[test]
    fn people_first_counts_and_escaping() {
        let f = Fleet {
            rows: vec![
                row("PC-A", "repaired"),
                row("<script>alert(1)</script>", "needs-attention"),
                row("PC-C", "repaired"),
            ],
            reports: vec![
                serde_json::json!({"a": 1}),
                serde_json::json!({"b": "</pre><script>"}),
                serde_json::json!({"c": 3}),
            ],
            ..Default::default()
        };
        let p = page(&f, "now");
        assert!(!p.contains("<script>"), "{p}");
        assert!(p.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(p.contains("<b>2</b>repaired</div>"));
        assert!(p.contains("<b>1</b>needs-attention</div>"));
        // The machine needing a person is first, in its own table.
        let att = p.find("id=\"attention\"").unwrap();
        let all = p.find("id=\"all\"").unwrap();
        let first_link = p[att..].find("href=\"#m1\"").unwrap() + att;
        assert!(first_link < all);
        assert!(!p[att..all].contains("PC-A"));
        // Each machine's report, one click away.
        for i in 0..3 {
            assert!(p.contains(&format!("<section class=\"report\" id=\"m{i}\">")));
        }
        assert!(p.contains("&lt;/pre&gt;&lt;script&gt;"));
        assert!(
            !p.contains("http://") && !p.contains("https://"),
            "self-contained"
        );
    }

    #[test]
    fn a_machine_counts_once_by_its_latest_run() {
        let mut failed = row("PC-A", "failed");
        failed.finished = "2026-01-01T00:00:00Z".into();
        let mut fixed = row("PC-A", "repaired");
        fixed.finished = "2026-01-01T01:00:00Z".into();
        let mut other = row("PC-B", "needs-attention");
        other.finished = "2026-01-01T00:30:00Z".into();
        let f = Fleet {
            rows: vec![fixed, failed, other],
            reports: vec![serde_json::json!({}); 3],
            ..Default::default()
        };
        assert_eq!(crate::fleet::latest_runs(&f.rows), vec![0, 2]);
        assert_eq!(machines_needing_a_person(&f), 1);
        let p = page(&f, "now");
        assert!(p.contains("2 machine(s) · 3 run(s)"), "{p}");
        assert!(p.contains("<b>1</b>repaired</div>"), "{p}");
        assert!(!p.contains("</b>failed</div>"), "{p}");
        let att = p.find("id=\"attention\"").unwrap();
        let all = p.find("id=\"all\"").unwrap();
        assert!(p[att..all].contains("PC-B") && !p[att..all].contains("PC-A"));
        // The failed run is still listed, marked as superseded.
        assert!(
            p[all..].contains("<tr class=\"earlier\"><td><a href=\"#m1\">PC-A"),
            "{p}"
        );
    }
}
