//! `defib playbook new ID`: a commented starting point for a new incident's
//! playbook. Every field is one the parser knows, the example conditions
//! and actions are the common shape of a "security update removed a system
//! file" incident, and the text passes `defib playbook check` as written,
//! so an editor can start from something that loads and change it step by
//! step (docs/playbooks.md has the walkthrough).

use anyhow::{bail, Result};

/// The template for `id`, dated `date` (YYYY-MM-DD). Fails on an id the
/// playbook parser would refuse, so a bad name is caught before a file is
/// written.
pub fn playbook(id: &str, date: &str) -> Result<String> {
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        bail!("playbook id {id:?}: use lowercase letters, digits and '-' (e.g. acme-av-2026-11)");
    }
    let text = TEMPLATE.replace("@ID@", id).replace("@DATE@", date);
    // The template is only useful if it loads: check it the way the image
    // build will.
    defib_rescue::playbook::Playbook::parse(&text, &format!("{id}.toml"))?;
    Ok(text)
}

const TEMPLATE: &str = r#"# @ID@: a playbook for one incident. Edit every line marked TODO, then
#   defib playbook check THIS-FILE
# and test it on a victim disk before it goes into an image
# (docs/playbooks.md, "Writing a playbook for a new incident").
#
# Say here, in plain words, what the vendor's update did, which Windows
# versions it hit, and which facts are NOT public (keep those conditions
# conservative rather than guessed).
schema = 1
id = "@ID@"
title = "TODO: vendor, what it removed, the detection name"
date = "@DATE@"            # the day of the incident
references = [
    "TODO: the vendor's advisory (title, number, date)",
]
# What the technician reads on the screen and in the report.
summary = """
TODO: what happened, what defib does about it, and what to do afterwards
(e.g. update the product before its next scan)."""

# Which installations this applies to; leave a field out to match any.
[applies]
min_build = 2600           # TODO: CurrentBuild range (2600 XP, 7601 7 SP1, 19045 10 22H2)
max_build = 2600
arch = ["x86"]             # x86, x64, arm64
# service_pack = ["Service Pack 3"]

# Conditions: ALL must hold before any action runs. Make them as tight as
# the public facts allow: the product installed, its signature version,
# the damage itself.
[[when]]
kind = "files"
id = "product-installed"
glob = 'Program Files\TODO-Vendor\*\*.exe'

[[when]]
kind = "missing"
id = "file-missing"
path = 'Windows\system32\TODO.dll'

# [[when]]
# kind = "registry"
# id = "bad-signatures"
# hive = "SOFTWARE"
# key = 'TODO-Vendor\Engine'
# value = "SignatureVersion"
# equals = [1234]

# [[when]]
# kind = "quarantine"
# id = "in-quarantine"
# vendor = "any"
# original = '*\system32\TODO.dll'

# Actions run in order; every change is journalled and backed up first.
[[action]]
kind = "restore"
path = 'Windows\system32\TODO.dll'
# Where a good copy may come from, tried in order; each is checked (PE
# architecture and build, or the store's hash) before it is written.
sources = [
    { quarantine = "any" },
    "dllcache",
    "service-pack-files",
    "winsxs",
    "store",
]
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_loads_and_names_its_id() {
        let t = playbook("acme-av-2026-11", "2026-11-29").expect("template");
        let pb = defib_rescue::playbook::Playbook::parse(&t, "t.toml").expect("parse");
        assert_eq!(pb.id, "acme-av-2026-11");
        assert_eq!(pb.date, "2026-11-29");
        assert!(!pb.actions.is_empty() && pb.conditions.len() == 2);
    }

    #[test]
    fn bad_ids_are_refused() {
        for id in ["", "Acme", "acme_av", "a b", "../x"] {
            assert!(playbook(id, "2026-11-29").is_err(), "{id:?}");
        }
    }
}
