//! Synthetic bulk for a known-good store: `n` named 1 MiB objects of
//! seeded pseudo-random bytes added to a store folder's index. Named
//! entries are never restore candidates, so they only weigh — what a
//! fleet's store of several Windows builds weighs. Shared by
//! tests/store_medium.rs and the bench.

use std::path::Path;

pub const OBJECT_SIZE: usize = 1 << 20;

/// Seeded xorshift64: incompressible, different per seed, quick.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Adds `n` objects to the store in `store` (which must have an
/// `index.json`, e.g. from `victim::store_payloads`).
pub fn add_synthetic(store: &Path, n: usize) -> std::io::Result<()> {
    let index_path = store.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path)?)?;
    let entries = index["entries"]
        .as_array_mut()
        .ok_or_else(|| std::io::Error::other("index.json has no entries array"))?;
    std::fs::create_dir_all(store.join("objects"))?;
    for i in 0..n {
        let data = noise(OBJECT_SIZE, i as u64 + 1);
        let sha = defib_builder::sha256_hex(&data);
        std::fs::write(store.join("objects").join(&sha), &data)?;
        entries.push(serde_json::json!({
            "name": format!("synthetic-{i:04}"),
            "path": format!("defib-test\\synthetic-{i:04}.bin"),
            "sha256": sha,
            "size": data.len(),
            "source": "synthetic (tests/common/bigstore.rs)",
        }));
    }
    std::fs::write(&index_path, serde_json::to_vec_pretty(&index)?)
}
