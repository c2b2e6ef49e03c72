//! A read-only reader for the SQLite database files two quarantines use
//! (Avast/AVG `vault.db`, Kaspersky `quarantine.db`): walk a table's
//! b-tree and decode its rows. Written from the SQLite file format
//! description (sqlite.org/fileformat2.html): header, table b-tree pages
//! (leaf 0x0D, interior 0x05), cells with overflow chains, records with
//! serial types.
//!
//! This is NOT SQLite: no SQL, no indexes, no journal or WAL replay, no
//! writing. Rows come back in rowid order. Why not a crate: rusqlite
//! brings the C library into the static PID 1, for two small reads.
//! Every offset is checked, overflow chains and tree walks are bounded by
//! the page count, and a payload is capped at [`super::MAX_RECORD`].

use anyhow::{anyhow, bail, Context, Result};

use super::util::Cursor;

const MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// One column value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    pub(crate) fn text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
    pub(crate) fn int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub(crate) fn blob(&self) -> Option<&[u8]> {
        match self {
            Value::Blob(b) => Some(b),
            _ => None,
        }
    }
}

/// A row: its rowid and its columns (an `INTEGER PRIMARY KEY` column is
/// stored as NULL; [`Row::id_or_rowid`] reads it).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub rowid: i64,
    pub cols: Vec<Value>,
}

impl Row {
    pub(crate) fn col(&self, i: usize) -> &Value {
        self.cols.get(i).unwrap_or(&Value::Null)
    }
    /// Column `i`, or the rowid when the column is an alias of it (NULL).
    pub(crate) fn id_or_rowid(&self, i: usize) -> i64 {
        self.col(i).int().unwrap_or(self.rowid)
    }
}

/// A database image held in memory.
#[derive(Debug)]
pub(crate) struct Db<'a> {
    buf: &'a [u8],
    page_size: usize,
    usable: usize,
    pages: usize,
    utf16: bool,
}

impl<'a> Db<'a> {
    pub(crate) fn open(buf: &'a [u8]) -> Result<Self> {
        if buf.len() < 100 || &buf[..16] != MAGIC {
            bail!("not an SQLite 3 database");
        }
        let ps = u16::from_be_bytes([buf[16], buf[17]]);
        let page_size = if ps == 1 { 65536 } else { usize::from(ps) };
        if !page_size.is_power_of_two() || page_size < 512 {
            bail!("page size {page_size} is not valid");
        }
        let reserved = usize::from(buf[20]);
        let usable = page_size
            .checked_sub(reserved)
            .filter(|u| *u >= 480)
            .ok_or_else(|| anyhow!("{reserved} reserved bytes leave no usable page"))?;
        let enc = u32::from_be_bytes([buf[56], buf[57], buf[58], buf[59]]);
        let utf16 = match enc {
            0 | 1 => false,
            2 => true,
            e => bail!("text encoding {e} is not supported"),
        };
        let pages = buf.len() / page_size;
        // The header's page count is trusted when "version-valid-for"
        // equals the change counter (fileformat2 1.3.7): then a shorter
        // file was cut, even if the rows we want survived.
        let be32 = |o: usize| u32::from_be_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
        let declared = be32(28) as usize;
        if be32(92) == be32(24)
            && declared != 0
            && (declared > pages || !buf.len().is_multiple_of(page_size))
        {
            bail!(
                "truncated: the header says {declared} pages of {page_size} bytes, the file is {} bytes",
                buf.len()
            );
        }
        Ok(Db {
            buf,
            page_size,
            usable,
            pages,
            utf16,
        })
    }

    fn page(&self, n: u32) -> Result<&'a [u8]> {
        let n = n as usize;
        if n == 0 || n > self.pages {
            bail!("page {n} is outside the {}-page file", self.pages);
        }
        Ok(&self.buf[(n - 1) * self.page_size..n * self.page_size])
    }

    /// Every row of table `name` (from `sqlite_master`).
    pub(crate) fn table(&self, name: &str) -> Result<Vec<Row>> {
        let master = self.walk(1).context("reading the schema")?;
        let root = master
            .iter()
            .find(|r| {
                r.col(0).text() == Some("table")
                    && r.col(1)
                        .text()
                        .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
            .and_then(|r| r.col(3).int())
            .ok_or_else(|| anyhow!("no table {name}"))?;
        let root = u32::try_from(root).map_err(|_| anyhow!("table {name} has root page {root}"))?;
        self.walk(root)
            .with_context(|| format!("reading table {name}"))
    }

    fn walk(&self, root: u32) -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        let mut stack = vec![root];
        let mut visited = 0usize;
        while let Some(p) = stack.pop() {
            visited += 1;
            if visited > self.pages {
                bail!("the b-tree visits more pages than the file has (a loop)");
            }
            let page = self.page(p)?;
            let hdr = if p == 1 { 100 } else { 0 };
            let mut c = Cursor::at(page, hdr)?;
            let kind = c.u8()?;
            c.skip(2)?;
            let ncells = usize::from(u16::from_be_bytes(c.array()?));
            c.skip(3)?;
            let right = match kind {
                0x05 => Some(u32::from_be_bytes(c.array()?)),
                0x0D => None,
                k => bail!("page {p} has type {k:#x}, not a table b-tree page"),
            };
            let mut children = Vec::new();
            for i in 0..ncells {
                let off = usize::from(u16::from_be_bytes(
                    c.array().with_context(|| format!("page {p} cell {i}"))?,
                ));
                let mut cell =
                    Cursor::at(page, off).with_context(|| format!("page {p} cell {i}"))?;
                if right.is_some() {
                    children.push(u32::from_be_bytes(cell.array()?));
                } else {
                    let len = varint(&mut cell)?;
                    let rowid = varint(&mut cell)? as i64;
                    let payload = self
                        .payload(&mut cell, len)
                        .with_context(|| format!("page {p} cell {i}"))?;
                    rows.push(Row {
                        rowid,
                        cols: self.record(&payload)?,
                    });
                }
            }
            if let Some(r) = right {
                children.push(r);
            }
            // Depth-first, left to right: push in reverse.
            stack.extend(children.into_iter().rev());
        }
        Ok(rows)
    }

    fn payload(&self, c: &mut Cursor<'_>, len: u64) -> Result<Vec<u8>> {
        super::util::check_declared("a database row", len)?;
        let len = len as usize;
        let u = self.usable;
        let x = u - 35;
        let local = if len <= x {
            len
        } else {
            let m = ((u - 12) * 32 / 255) - 23;
            let k = m + ((len - m) % (u - 4));
            if k <= x {
                k
            } else {
                m
            }
        };
        let mut out = c.take(local)?.to_vec();
        if local < len {
            let mut next = u32::from_be_bytes(c.array()?);
            let mut hops = 0usize;
            while out.len() < len {
                hops += 1;
                if next == 0 || hops > self.pages {
                    bail!("overflow chain ends early or loops");
                }
                let page = self.page(next)?;
                next = u32::from_be_bytes([page[0], page[1], page[2], page[3]]);
                let want = (len - out.len()).min(u - 4);
                out.extend_from_slice(&page[4..4 + want]);
            }
        }
        Ok(out)
    }

    fn record(&self, payload: &[u8]) -> Result<Vec<Value>> {
        let mut h = Cursor::new(payload);
        let hlen = varint(&mut h)? as usize;
        if hlen > payload.len() {
            bail!(
                "record header of {hlen} bytes in a {}-byte row",
                payload.len()
            );
        }
        let mut types = Vec::new();
        while h.pos() < hlen {
            types.push(varint(&mut h)?);
        }
        let mut b = Cursor::at(payload, hlen)?;
        let mut cols = Vec::new();
        for t in types {
            let v = match t {
                0 => Value::Null,
                1..=6 => {
                    let n = [0, 1, 2, 3, 4, 6, 8][t as usize];
                    let bytes = b.take(n)?;
                    let mut v = if bytes[0] & 0x80 != 0 { -1i64 } else { 0 };
                    for &x in bytes {
                        v = (v << 8) | i64::from(x);
                    }
                    Value::Int(v)
                }
                7 => Value::Real(f64::from_be_bytes(b.array()?)),
                8 => Value::Int(0),
                9 => Value::Int(1),
                t if t >= 12 && t % 2 == 0 => Value::Blob(b.take_len((t - 12) / 2)?.to_vec()),
                t if t >= 13 => {
                    let raw = b.take_len((t - 13) / 2)?;
                    Value::Text(if self.utf16 {
                        super::util::utf16le(raw)
                    } else {
                        String::from_utf8_lossy(raw).into_owned()
                    })
                }
                t => bail!("reserved serial type {t}"),
            };
            cols.push(v);
        }
        Ok(cols)
    }
}

/// SQLite's big-endian varint: 7 bits a byte, the ninth byte whole.
fn varint(c: &mut Cursor<'_>) -> Result<u64> {
    let mut v = 0u64;
    for i in 0..9 {
        let b = c.u8()?;
        if i == 8 {
            return Ok((v << 8) | u64::from(b));
        }
        v = (v << 7) | u64::from(b & 0x7F);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        assert_eq!(varint(&mut Cursor::new(&[0x7F])).expect("1"), 0x7F);
        assert_eq!(varint(&mut Cursor::new(&[0x81, 0x00])).expect("2"), 0x80);
        assert_eq!(varint(&mut Cursor::new(&[0xFF; 9])).expect("9"), u64::MAX);
        assert!(varint(&mut Cursor::new(&[0x81])).is_err());
    }

    /// Made by SQLite itself (Python's sqlite3, page size 512) with the
    /// Avast vault schema: a 20000-byte blob spans an overflow chain.
    const FIXTURE: &[u8] = include_bytes!("testdata/vault-overflow.db");

    fn pattern(n: usize, seed: usize) -> Vec<u8> {
        (0..n).map(|i| ((i * 31 + seed) % 251) as u8).collect()
    }

    #[test]
    fn reads_rows_and_overflow_chains_written_by_sqlite() {
        let db = Db::open(FIXTURE).expect("open");
        let streams = db.table("stream").expect("stream");
        let got: Vec<(i64, usize)> = streams
            .iter()
            .map(|r| (r.id_or_rowid(0), r.col(4).blob().map_or(0, <[u8]>::len)))
            .collect();
        assert_eq!(got, [(1, 20000), (2, 100), (3, 600)]);
        assert_eq!(streams[0].col(4).blob().expect("blob"), pattern(20000, 7));
        assert_eq!(streams[2].col(4).blob().expect("blob"), pattern(600, 5));
        let vault = db.table("vault").expect("vault");
        assert_eq!(
            vault[0].col(2).text(),
            Some(r"C:\WINDOWS\system32\user32.dll")
        );
        assert!(db
            .table("nosuch")
            .unwrap_err()
            .to_string()
            .contains("no table"));
    }

    /// Every leaf cell's payload length set to the largest varint.
    #[test]
    fn huge_declared_payloads_are_refused() {
        let mut img = FIXTURE.to_vec();
        let ps = 512;
        for p in 1..img.len() / ps {
            let base = p * ps;
            let hdr = base;
            if img[hdr] != 0x0D {
                continue;
            }
            let n = usize::from(u16::from_be_bytes([img[hdr + 3], img[hdr + 4]]));
            for i in 0..n {
                let at = hdr + 8 + 2 * i;
                let off = usize::from(u16::from_be_bytes([img[at], img[at + 1]]));
                img[base + off..base + off + 9].fill(0xFF);
            }
        }
        let db = Db::open(&img).expect("open");
        let e = db.table("stream").unwrap_err();
        assert!(format!("{e:#}").contains("more than"), "{e:#}");
    }

    #[test]
    fn truncated_files_and_loops_are_refused() {
        let e = Db::open(&FIXTURE[..FIXTURE.len() - 512]).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        // An interior page pointing at itself.
        let mut img = FIXTURE.to_vec();
        let db = Db::open(&img).expect("open");
        let root = db
            .walk(1)
            .expect("schema")
            .into_iter()
            .find(|r| r.col(1).text() == Some("stream"))
            .and_then(|r| r.col(3).int())
            .expect("root") as usize;
        let base = (root - 1) * 512;
        img[base] = 0x05;
        img[base + 3..base + 5].copy_from_slice(&0u16.to_be_bytes());
        img[base + 8..base + 12].copy_from_slice(&(root as u32).to_be_bytes());
        let e = Db::open(&img).expect("open").table("stream").unwrap_err();
        assert!(format!("{e:#}").contains("a loop"), "{e:#}");
    }

    #[test]
    fn refuses_non_databases() {
        assert!(Db::open(b"SQLite format 3\0").is_err());
        let mut h = vec![0u8; 1024];
        h[..16].copy_from_slice(MAGIC);
        h[16..18].copy_from_slice(&1000u16.to_be_bytes());
        assert!(Db::open(&h).unwrap_err().to_string().contains("page size"));
        h[16..18].copy_from_slice(&512u16.to_be_bytes());
        let db = Db::open(&h).expect("open");
        // Page 1 is all zero: type 0 is not a table page.
        assert!(db.table("x").is_err());
    }
}
