//! Repairs the "." and ".." entries fatfs 0.3 writes in new directories.
//!
//! fatfs 0.3.6 gives "." and ".." long-name (LFN) entries, so the first
//! slot of every directory is an LFN entry instead of ".", and it points
//! ".." of a top-level directory at the root's cluster instead of 0.
//! fatgen103 §6 requires "." and ".." as the first two short entries and
//! cluster 0 in ".." when the parent is the root; fsck.fat reports both,
//! and some firmware FAT drivers are strict. This pass walks the directory
//! tree and rewrites the first four slots from
//! `[LFN "."] ["."] [LFN ".."] [".."]` to `["."] [".."] [deleted] [deleted]`.
//!
//! It is not a FAT driver: FAT32 only, it follows cluster chains and
//! directory entries just far enough to find directories, and it only ever
//! writes the first 128 bytes of a directory's first cluster. It is
//! idempotent, so running it on an already-correct volume changes nothing.

use std::io::{Read, Seek, SeekFrom, Write};

use anyhow::{bail, Context, Result};

/// Directory entry size and fields, fatgen103 §6.
const ENTRY: usize = 32;
const ATTR: usize = 11;
const ATTR_LFN: u8 = 0x0F;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
/// DIR_FstClusHI at 20, DIR_FstClusLO at 26.
const CLUS_HI: usize = 20;
const CLUS_LO: usize = 26;
/// DIR_Name[0] values: end of directory, deleted entry.
const END: u8 = 0x00;
const DELETED: u8 = 0xE5;
const DOT: &[u8; 11] = b".          ";
const DOTDOT: &[u8; 11] = b"..         ";
/// FAT32 entries use 28 bits; >= 0x0FFFFFF8 ends a chain (fatgen103 §4).
const FAT32_MASK: u32 = 0x0FFF_FFFF;
const END_OF_CHAIN: u32 = 0x0FFF_FFF8;

struct Geometry {
    cluster_size: u64,
    fat_start: u64,
    data_start: u64,
    root_cluster: u32,
    clusters: u32,
}

/// Fixes every directory of the FAT32 volume in `vol` (positioned anywhere;
/// offsets are relative to the volume start).
pub(super) fn fix_dot_entries<V: Read + Write + Seek>(vol: &mut V) -> Result<()> {
    let g = geometry(vol)?;
    // (directory cluster, parent cluster; 0 = the root)
    let mut todo = vec![(g.root_cluster, None::<u32>)];
    let mut visited = 0u32;
    while let Some((cluster, parent)) = todo.pop() {
        visited += 1;
        if visited > g.clusters {
            bail!("directory tree loops (more directories than clusters)");
        }
        if let Some(parent) = parent {
            fix_one(vol, &g, cluster, parent)?;
        }
        let dir = read_chain(vol, &g, cluster)?;
        for e in dir.chunks_exact(ENTRY) {
            if e[0] == END {
                break;
            }
            let attr = e[ATTR];
            if e[0] == DELETED || attr == ATTR_LFN || attr & ATTR_VOLUME_ID != 0 {
                continue;
            }
            if attr & ATTR_DIRECTORY != 0 && &e[..11] != DOT && &e[..11] != DOTDOT {
                let child = first_cluster(e);
                // Top-level directories have the root as parent: cluster 0.
                let parent_ref = if parent.is_none() { 0 } else { cluster };
                todo.push((child, Some(parent_ref)));
            }
        }
    }
    Ok(())
}

fn fix_one<V: Read + Write + Seek>(
    vol: &mut V,
    g: &Geometry,
    cluster: u32,
    parent: u32,
) -> Result<()> {
    let pos = cluster_offset(g, cluster)?;
    let mut head = [0u8; 4 * ENTRY];
    vol.seek(SeekFrom::Start(pos))
        .context("seeking to a directory")?;
    vol.read_exact(&mut head).context("reading a directory")?;
    let slot = |i: usize| &head[i * ENTRY..(i + 1) * ENTRY];
    let mut dot = [0u8; ENTRY];
    let mut dotdot = [0u8; ENTRY];
    if slot(0)[ATTR] == ATTR_LFN
        && &slot(1)[..11] == DOT
        && slot(2)[ATTR] == ATTR_LFN
        && &slot(3)[..11] == DOTDOT
    {
        dot.copy_from_slice(slot(1));
        dotdot.copy_from_slice(slot(3));
    } else if &slot(0)[..11] == DOT && &slot(1)[..11] == DOTDOT {
        dot.copy_from_slice(slot(0));
        dotdot.copy_from_slice(slot(1));
    } else {
        bail!("directory at cluster {cluster} does not start with \".\" and \"..\"");
    }
    dotdot[CLUS_HI..CLUS_HI + 2].copy_from_slice(&((parent >> 16) as u16).to_le_bytes());
    dotdot[CLUS_LO..CLUS_LO + 2].copy_from_slice(&(parent as u16).to_le_bytes());

    let mut fixed = head;
    fixed[..ENTRY].copy_from_slice(&dot);
    fixed[ENTRY..2 * ENTRY].copy_from_slice(&dotdot);
    if slot(0)[ATTR] == ATTR_LFN {
        // The two freed slots become deleted entries (not end markers: the
        // directory's real entries follow them).
        for i in 2..4 {
            let s = &mut fixed[i * ENTRY..(i + 1) * ENTRY];
            s.fill(0);
            s[0] = DELETED;
        }
    }
    if fixed != head {
        vol.seek(SeekFrom::Start(pos))
            .context("seeking to a directory")?;
        vol.write_all(&fixed)
            .context("rewriting \".\" and \"..\"")?;
    }
    Ok(())
}

fn geometry<V: Read + Seek>(vol: &mut V) -> Result<Geometry> {
    let mut bs = [0u8; 512];
    vol.seek(SeekFrom::Start(0))
        .context("seeking to the boot sector")?;
    vol.read_exact(&mut bs).context("reading the boot sector")?;
    // BPB fields, fatgen103 §3.1 and §3.3 (FAT32).
    let u16_at = |o: usize| u64::from(u16::from_le_bytes([bs[o], bs[o + 1]]));
    let u32_at = |o: usize| u32::from_le_bytes([bs[o], bs[o + 1], bs[o + 2], bs[o + 3]]);
    let bytes_per_sector = u16_at(11);
    let sectors_per_cluster = u64::from(bs[13]);
    let reserved = u16_at(14);
    let fats = u64::from(bs[16]);
    let total_sectors = u64::from(u32_at(32));
    let fat_size = u64::from(u32_at(36));
    let root_cluster = u32_at(44);
    if bytes_per_sector < 512 || sectors_per_cluster == 0 || fat_size == 0 || total_sectors == 0 {
        bail!("not a FAT32 boot sector");
    }
    let data_sectors = total_sectors
        .checked_sub(reserved + fats * fat_size)
        .context("FAT32 boot sector sizes are inconsistent")?;
    Ok(Geometry {
        cluster_size: bytes_per_sector * sectors_per_cluster,
        fat_start: reserved * bytes_per_sector,
        data_start: (reserved + fats * fat_size) * bytes_per_sector,
        root_cluster,
        clusters: u32::try_from(data_sectors / sectors_per_cluster).unwrap_or(u32::MAX),
    })
}

fn first_cluster(e: &[u8]) -> u32 {
    let hi = u32::from(u16::from_le_bytes([e[CLUS_HI], e[CLUS_HI + 1]]));
    let lo = u32::from(u16::from_le_bytes([e[CLUS_LO], e[CLUS_LO + 1]]));
    hi << 16 | lo
}

fn cluster_offset(g: &Geometry, cluster: u32) -> Result<u64> {
    // Data clusters are numbered from 2, fatgen103 §3.5.
    if cluster < 2 || cluster - 2 >= g.clusters {
        bail!("cluster {cluster} is outside the volume");
    }
    Ok(g.data_start + u64::from(cluster - 2) * g.cluster_size)
}

fn read_chain<V: Read + Seek>(vol: &mut V, g: &Geometry, start: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut cluster = start;
    let mut steps = 0u32;
    loop {
        steps += 1;
        if steps > g.clusters {
            bail!("cluster chain from {start} loops");
        }
        let pos = cluster_offset(g, cluster)?;
        let at = out.len();
        out.resize(at + g.cluster_size as usize, 0);
        vol.seek(SeekFrom::Start(pos))
            .context("seeking to a directory cluster")?;
        vol.read_exact(&mut out[at..])
            .context("reading a directory cluster")?;
        let mut next = [0u8; 4];
        vol.seek(SeekFrom::Start(g.fat_start + u64::from(cluster) * 4))
            .context("seeking in the FAT")?;
        vol.read_exact(&mut next).context("reading the FAT")?;
        let next = u32::from_le_bytes(next) & FAT32_MASK;
        if next >= END_OF_CHAIN {
            return Ok(out);
        }
        cluster = next;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn blank_volume_is_refused() {
        // Covered end to end by image::tests (fsck.fat over built images);
        // here only the guard against a blank boot sector.
        let mut blank = std::io::Cursor::new(vec![0u8; 4096]);
        assert!(super::fix_dot_entries(&mut blank).is_err());
    }
}
