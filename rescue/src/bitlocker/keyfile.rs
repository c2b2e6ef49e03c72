//! Key files (stub).
