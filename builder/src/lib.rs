//! defib's builder: turns Debian's signed boot parts, our static rescue
//! binary and the payloads into a bootable USB image.

pub mod cpio;
pub mod image;
