//! Just enough XML for the flat vendor indexes (Avast/AVG `index.xml`,
//! McAfee ENS QuarMeta): the text of `<Tag>…</Tag>` elements, and the
//! blocks of a repeated element. Entities `&lt; &gt; &amp; &quot; &apos;`
//! and numeric references are decoded; CDATA, namespaces and attributes
//! are not needed by these files and not read.
//!
//! This is NOT an XML parser: no DTD (so no entity-expansion attacks), no
//! validation. A missing or malformed element reads as absent.

/// The text of every `<tag>…</tag>` block in `doc`, in order.
pub(crate) fn blocks<'a>(doc: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

/// The decoded text of the first `<tag>` in `doc`; `<tag/>` reads as "".
pub(crate) fn text(doc: &str, tag: &str) -> Option<String> {
    if let Some(b) = blocks(doc, tag).first() {
        return Some(unescape(b.trim()));
    }
    doc.contains(&format!("<{tag}/>")).then(String::new)
}

pub(crate) fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(j) = after.find(';').filter(|&j| j <= 10) else {
            out.push('&');
            rest = after;
            continue;
        };
        let ent = &after[..j];
        let ch = match ent {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e if e.starts_with("#x") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &after[j + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_flat_elements() {
        let d = "<a><E><X>1 &amp; 2</X></E><E><X>&#x41;&#66;&bogus;</X><Y/></E></a>";
        let es = blocks(d, "E");
        assert_eq!(es.len(), 2);
        assert_eq!(text(es[0], "X").as_deref(), Some("1 & 2"));
        assert_eq!(text(es[1], "X").as_deref(), Some("AB&bogus;"));
        assert_eq!(text(es[1], "Y").as_deref(), Some(""));
        assert_eq!(text(es[1], "Z"), None);
        assert_eq!(blocks("<E><X>unclosed", "E").len(), 0);
        assert_eq!(unescape(&escape("<a&\"b>")), "<a&\"b>");
    }
}
