//! SBAT: will a PC still boot this stick? Shim refuses any loader whose
//! `.sbat` section names a component at a generation below the PC's SBAT
//! level (the `SbatLevel` variable shim keeps, raised by shim and Windows
//! updates when a GRUB or shim flaw is revoked). A stick built months
//! before an incident may carry a GRUB that a PC updated since refuses.
//!
//! Formats (shim's SBAT.md): a loader's `.sbat` section is CSV text, one
//! `component,generation,vendor,package,version,url` per line, the first
//! being `sbat,1,…`. A level is lines of `component,generation`, the first
//! `sbat,1,<date>` naming it. Shim carries the levels it applies in its
//! `.sbatlevel` section: a u32 format version (0), then two u32 offsets
//! (relative to byte 4) of the NUL-terminated `previous` and `latest`
//! levels.

use anyhow::{bail, Context, Result};
use object::read::pe::PeFile64;
use object::{Object, ObjectSection};

/// The most bytes of a section read as text.
const MAX_TEXT: usize = 64 << 10;

/// One `.sbat` line of a loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub component: String,
    pub generation: u32,
}

/// An SBAT level: its date line and the minimum generation per component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Level {
    /// The date field of `sbat,1,<date>` (e.g. `2025051000`).
    pub date: String,
    pub minimum: Vec<Entry>,
}

/// A loader a level revokes, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub loader: String,
    pub component: String,
    pub has: u32,
    pub needs: u32,
}

impl std::fmt::Display for Revoked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} carries {} generation {}, the level requires {}",
            self.loader, self.component, self.has, self.needs
        )
    }
}

/// Printable text up to the first NUL, bounded.
fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end.min(MAX_TEXT)])
        .chars()
        .filter(|c| *c == '\n' || !c.is_control())
        .collect()
}

/// A section's file bytes (its virtual size, not the padded raw size).
fn section<'a>(pe: &'a [u8], name: &str) -> Result<Option<&'a [u8]>> {
    let file = PeFile64::parse(pe).context("not a 64-bit PE image")?;
    let Some(s) = file.section_by_name(name) else {
        return Ok(None);
    };
    let data = s
        .data()
        .with_context(|| format!("reading the {name} section"))?;
    let size = (s.size() as usize).min(data.len());
    Ok(Some(&data[..size]))
}

/// The `.sbat` entries of a loader (shim, GRUB); empty when it has none.
pub fn entries(pe: &[u8]) -> Result<Vec<Entry>> {
    let Some(data) = section(pe, ".sbat")? else {
        return Ok(Vec::new());
    };
    Ok(parse_entries(&text(data)))
}

/// `component,generation,…` lines; malformed lines are skipped.
pub fn parse_entries(csv: &str) -> Vec<Entry> {
    csv.lines()
        .filter_map(|l| {
            let mut f = l.split(',');
            let component = f.next()?.trim();
            let generation = f.next()?.trim().parse().ok()?;
            (!component.is_empty()).then(|| Entry {
                component: component.to_string(),
                generation,
            })
        })
        .collect()
}

/// Parses a level (`sbat,1,<date>` then `component,generation` lines).
pub fn parse_level(text: &str) -> Result<Level> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().context("an empty SBAT level")?;
    let mut head = first.split(',');
    if head.next() != Some("sbat") || head.next() != Some("1") {
        bail!("an SBAT level starts with `sbat,1,<date>`, not `{first}`");
    }
    let date = head.next().unwrap_or_default().to_string();
    let minimum = parse_entries(&lines.collect::<Vec<_>>().join("\n"));
    Ok(Level { date, minimum })
}

/// The `latest` level shim carries (what it applies when told to, and
/// what the next updates put on PCs), `None` for a shim without one.
pub fn shim_latest(shim: &[u8]) -> Result<Option<Level>> {
    let Some(d) = section(shim, ".sbatlevel")? else {
        return Ok(None);
    };
    let u32_at = |at: usize| -> Result<usize> {
        let b = d
            .get(at..at + 4)
            .context(".sbatlevel is shorter than its header")?;
        Ok(u32::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    if u32_at(0)? != 0 {
        bail!(".sbatlevel format version {} is unknown", u32_at(0)?);
    }
    let latest = 4usize
        .checked_add(u32_at(8)?)
        .filter(|&at| at < d.len())
        .context(".sbatlevel's latest offset is outside the section")?;
    parse_level(&text(&d[latest..])).map(Some)
}

/// What `level` revokes of `loader` (named for messages).
pub fn revoked(loader: &str, entries: &[Entry], level: &Level) -> Vec<Revoked> {
    level
        .minimum
        .iter()
        .filter(|m| m.component != "sbat")
        .filter_map(|m| {
            let has = entries.iter().find(|e| e.component == m.component)?;
            (has.generation < m.generation).then(|| Revoked {
                loader: loader.to_string(),
                component: m.component.clone(),
                has: has.generation,
                needs: m.generation,
            })
        })
        .collect()
}

/// The stick's two loaders checked against a level: the line for the
/// build and `defib inspect`, and what is revoked.
pub fn check(shim: &[u8], grub: &[u8], level: &Level) -> Result<(String, Vec<Revoked>)> {
    let shim_e = entries(shim).context("shim (EFI/BOOT/BOOTX64.EFI)")?;
    let grub_e = entries(grub).context("GRUB (EFI/BOOT/grubx64.efi)")?;
    let mut bad = revoked("shim", &shim_e, level);
    bad.extend(revoked("GRUB", &grub_e, level));
    let show = |e: &[Entry]| {
        e.iter()
            .filter(|x| x.component != "sbat")
            .map(|x| format!("{},{}", x.component, x.generation))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let line = format!(
        "sbat: shim {} | GRUB {} | against level {}: {}",
        show(&shim_e),
        show(&grub_e),
        if level.date.is_empty() {
            "(undated)"
        } else {
            &level.date
        },
        if bad.is_empty() {
            "boots".to_string()
        } else {
            format!(
                "REVOKED ({}): a PC at this level refuses the stick; rebuild it with current packages (scripts/build)",
                bad.iter().map(|b| b.to_string()).collect::<Vec<_>>().join("; ")
            )
        }
    );
    Ok((line, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_entries_parse_and_compare() {
        let grub = parse_entries(
            "sbat,1,SBAT Version,sbat,1,https://x\ngrub,5,Free Software Foundation,grub,2.12,https://y\ngrub.debian,5,Debian,grub2,2.12,https://z\n",
        );
        assert_eq!(grub.len(), 3);
        let level = parse_level("sbat,1,2025051000\nshim,4\ngrub,5\ngrub.proxmox,2\n").unwrap();
        assert_eq!(level.date, "2025051000");
        assert!(revoked("GRUB", &grub, &level).is_empty());
        let newer = parse_level("sbat,1,2099010100\ngrub,6\n").unwrap();
        let r = revoked("GRUB", &grub, &newer);
        assert_eq!(
            r,
            vec![Revoked {
                loader: "GRUB".into(),
                component: "grub".into(),
                has: 5,
                needs: 6
            }]
        );
        // A component the loader does not carry revokes nothing.
        let other = parse_level("sbat,1,2099\ngrub.proxmox,9\n").unwrap();
        assert!(revoked("GRUB", &grub, &other).is_empty());
    }

    #[test]
    fn bad_levels_are_named() {
        for (bad, why) in [
            ("", "empty"),
            ("shim,4\n", "starts with `sbat,1,"),
            ("sbat,2,2025\n", "starts with"),
        ] {
            let e = parse_level(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(entries(b"MZ not a PE").is_err());
    }
}
