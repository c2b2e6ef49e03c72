//! Reads a PE file's machine type and the version numbers of its
//! `VS_FIXEDFILEINFO`, to tell which Windows build and architecture a
//! system file (usually `ntoskrnl.exe`) belongs to.
//!
//! This is not a PE validator or a version-resource parser: it does not
//! check signatures or checksums and reads none of the `StringFileInfo`
//! strings. PE files are untrusted; `object` bounds-checks the headers and
//! resource tree, and the version block is parsed here with checked slices.
//!
//! References: Microsoft "PE Format" (learn.microsoft.com/windows/win32/debug/pe-format),
//! "VS_VERSIONINFO" and "VS_FIXEDFILEINFO" (learn.microsoft.com/windows/win32/menurc).

use crate::playbook::Arch;
use anyhow::{anyhow, bail, ensure, Context, Result};
use object::pe::{self, ImageDosHeader, ImageNtHeaders32, ImageNtHeaders64};
use object::read::pe::{ImageNtHeaders, ResourceDirectoryEntryData};
use object::{FileKind, LittleEndian as LE, ReadCache, ReadRef};
use std::path::Path;

/// What we learn from a PE file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeInfo {
    pub arch: Arch,
    /// `dwFileVersionMS`/`LS` as four numbers, e.g. `[10, 0, 19041, 1348]`.
    pub file_version: Option<[u16; 4]>,
    pub product_version: Option<[u16; 4]>,
}

/// `VS_FIXEDFILEINFO.dwSignature`.
const FIXED_FILE_INFO_SIGNATURE: u32 = 0xFEEF_04BD;
/// Version resources are a few KiB; refuse to copy anything absurd.
const MAX_VERSION_RESOURCE: u32 = 1 << 20;

/// Reads the machine type and version from a whole PE file in memory.
pub fn pe_info(bytes: &[u8]) -> Result<PeInfo> {
    read(bytes)
}

/// Reads the machine type and version from a PE file, reading only the
/// headers and the resource data (not the whole of a 10 MiB kernel).
pub fn pe_info_file(path: &Path) -> Result<PeInfo> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let cache = ReadCache::new(file);
    read(&cache).with_context(|| format!("reading PE file {}", path.display()))
}

/// `[5, 1, 2600, 5512]` → `"5.1.2600.5512"`.
pub fn version_string(v: [u16; 4]) -> String {
    format!("{}.{}.{}.{}", v[0], v[1], v[2], v[3])
}

fn read<'data, R: ReadRef<'data>>(data: R) -> Result<PeInfo> {
    match FileKind::parse(data).map_err(|e| anyhow!("not a PE file: {e}"))? {
        FileKind::Pe32 => read_pe::<ImageNtHeaders32, R>(data),
        FileKind::Pe64 => read_pe::<ImageNtHeaders64, R>(data),
        other => bail!("not a PE file (looks like {other:?})"),
    }
}

fn read_pe<'data, Pe: ImageNtHeaders, R: ReadRef<'data>>(data: R) -> Result<PeInfo> {
    let dos = ImageDosHeader::parse(data).map_err(|e| anyhow!("bad DOS header: {e}"))?;
    let mut offset = u64::from(dos.nt_headers_offset());
    let (nt, dirs) = Pe::parse(data, &mut offset).map_err(|e| anyhow!("bad PE headers: {e}"))?;
    // PE Format § Machine Types.
    let arch = match nt.file_header().machine.get(LE) {
        pe::IMAGE_FILE_MACHINE_I386 => Arch::X86,
        pe::IMAGE_FILE_MACHINE_AMD64 => Arch::X64,
        pe::IMAGE_FILE_MACHINE_ARM64 => Arch::Arm64,
        m => bail!("unsupported PE machine type {m:#06x}"),
    };
    let sections = nt
        .sections(data, offset)
        .map_err(|e| anyhow!("bad PE section table: {e}"))?;
    let fixed = match dirs
        .resource_directory(data, &sections)
        .map_err(|e| anyhow!("bad PE resource directory: {e}"))?
    {
        Some(rsrc) => version_resource(data, &sections, rsrc)?,
        None => None,
    };
    Ok(PeInfo {
        arch,
        file_version: fixed.map(|f| f.0),
        product_version: fixed.map(|f| f.1),
    })
}

/// Finds `RT_VERSION` → first name → first language → data, and reads its
/// fixed file info. `None` when the file has no version resource.
fn version_resource<'data, R: ReadRef<'data>>(
    data: R,
    sections: &object::read::pe::SectionTable<'data>,
    rsrc: object::read::pe::ResourceDirectory<'data>,
) -> Result<Option<([u16; 4], [u16; 4])>> {
    let bad = |e: object::read::Error| anyhow!("bad PE resource tree: {e}");
    let root = rsrc.root().map_err(bad)?;
    let Some(by_type) = root
        .entries
        .iter()
        .find(|e| e.name_or_id().id() == Some(pe::RT_VERSION))
    else {
        return Ok(None);
    };
    // The resource tree has three levels: type, name, language (PE Format § The .rsrc Section).
    let mut entry = by_type;
    for _level in 0..2 {
        let table = match entry.data(rsrc).map_err(bad)? {
            ResourceDirectoryEntryData::Table(t) => t,
            ResourceDirectoryEntryData::Data(_) => bail!("PE version resource tree is too shallow"),
        };
        match table.entries.first() {
            Some(e) => entry = e,
            None => return Ok(None),
        }
    }
    let leaf = match entry.data(rsrc).map_err(bad)? {
        ResourceDirectoryEntryData::Data(d) => d,
        ResourceDirectoryEntryData::Table(_) => bail!("PE version resource tree is too deep"),
    };
    let rva = leaf.offset_to_data.get(LE);
    let size = leaf.size.get(LE);
    ensure!(
        size <= MAX_VERSION_RESOURCE,
        "PE version resource is {size} bytes"
    );
    let (file_off, avail) = sections
        .pe_file_range_at(rva)
        .with_context(|| format!("PE version resource RVA {rva:#x} is in no section"))?;
    ensure!(avail >= size, "PE version resource runs past its section");
    let block = data
        .read_bytes_at(u64::from(file_off), u64::from(size))
        .map_err(|()| anyhow!("PE version resource is past the end of the file"))?;
    fixed_file_info(block).map(Some)
}

/// Parses the `VS_VERSIONINFO` root: `wLength`, `wValueLength`, `wType`,
/// `szKey` = "VS_VERSION_INFO" (UTF-16, NUL-terminated), padding to a 32-bit
/// boundary, then `VS_FIXEDFILEINFO` (signature, struct version, file
/// version MS/LS at +8/+12, product version MS/LS at +16/+20).
fn fixed_file_info(block: &[u8]) -> Result<([u16; 4], [u16; 4])> {
    const KEY: &str = "VS_VERSION_INFO";
    let key_end = 6 + (KEY.len() + 1) * 2;
    let key: Vec<u16> = block
        .get(6..key_end)
        .context("PE version resource is truncated")?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    ensure!(
        key.iter().take(KEY.len()).copied().eq(KEY.encode_utf16()) && key[KEY.len()] == 0,
        "PE version resource does not start with VS_VERSION_INFO"
    );
    let value_len = block
        .get(2..4)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .context("PE version resource is truncated")?;
    ensure!(
        value_len >= 52,
        "PE version resource has no VS_FIXEDFILEINFO"
    );
    let at = (key_end + 3) & !3;
    let ffi = block
        .get(at..at + 24)
        .context("PE VS_FIXEDFILEINFO is truncated")?;
    let u32_at = |i: usize| u32::from_le_bytes([ffi[i], ffi[i + 1], ffi[i + 2], ffi[i + 3]]);
    ensure!(
        u32_at(0) == FIXED_FILE_INFO_SIGNATURE,
        "PE VS_FIXEDFILEINFO has a bad signature {:#010x}",
        u32_at(0)
    );
    let quad = |ms: u32, ls: u32| [(ms >> 16) as u16, ms as u16, (ls >> 16) as u16, ls as u16];
    Ok((quad(u32_at(8), u32_at(12)), quad(u32_at(16), u32_at(20))))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::winreg::tests::corpus;
    use std::process::Command;

    /// Builds a tiny PE (a DLL with no code worth running) for `arch` whose
    /// VERSIONINFO says `version`, with Debian's mingw-w64 windres and gcc.
    pub(crate) fn build_pe(dir: &Path, arch: Arch, version: [u16; 4]) -> Vec<u8> {
        let triple = match arch {
            Arch::X86 => "i686-w64-mingw32",
            Arch::X64 => "x86_64-w64-mingw32",
            Arch::Arm64 => panic!("mingw-w64 in Debian has no arm64 target"),
        };
        let v = format!(
            "{},{},{},{}",
            version[0], version[1], version[2], version[3]
        );
        let vs = version_string(version);
        let rc = format!(
            "1 VERSIONINFO\nFILEVERSION {v}\nPRODUCTVERSION {v}\nFILEOS 0x40004\nFILETYPE 0x3\n\
             BEGIN\n BLOCK \"StringFileInfo\"\n BEGIN\n  BLOCK \"040904B0\"\n  BEGIN\n   \
             VALUE \"FileVersion\", \"{vs}\"\n  END\n END\n \
             BLOCK \"VarFileInfo\"\n BEGIN\n  VALUE \"Translation\", 0x409, 1200\n END\nEND\n"
        );
        let tag = format!("{}-{vs}", arch.as_str());
        let rc_path = dir.join(format!("{tag}.rc"));
        let obj = dir.join(format!("{tag}.res.o"));
        let c_path = dir.join(format!("{tag}.c"));
        let out = dir.join(format!("{tag}.exe"));
        std::fs::write(&rc_path, rc).unwrap();
        std::fs::write(&c_path, "int main(void) { return 0; }\n").unwrap();
        let run = |tool: String, args: &[&std::ffi::OsStr]| {
            let o = Command::new(&tool).args(args).output().unwrap_or_else(|e| {
                panic!("{tool} is required for these tests (apt-get install mingw-w64): {e}")
            });
            assert!(
                o.status.success(),
                "{tool}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        run(
            format!("{triple}-windres"),
            &[
                rc_path.as_os_str(),
                "-O".as_ref(),
                "coff".as_ref(),
                "-o".as_ref(),
                obj.as_os_str(),
            ],
        );
        run(
            format!("{triple}-gcc"),
            &[
                c_path.as_os_str(),
                obj.as_os_str(),
                "-s".as_ref(),
                "-o".as_ref(),
                out.as_os_str(),
            ],
        );
        std::fs::read(out).unwrap()
    }

    #[test]
    fn kernel32_x64() {
        let info = pe_info_file(&corpus("pe/kernel32.dll")).unwrap();
        assert_eq!(info.arch, Arch::X64);
        assert_eq!(info.file_version, Some([10, 0, 19041, 1348]));
        assert_eq!(info.product_version, Some([10, 0, 19041, 1348]));
    }

    #[test]
    fn shimeng_x64() {
        let bytes = std::fs::read(corpus("pe/shimeng.dll")).unwrap();
        let info = pe_info(&bytes).unwrap();
        assert_eq!(info.arch, Arch::X64);
        assert_eq!(
            info.file_version.map(version_string).as_deref(),
            Some("10.0.17763.1")
        );
    }

    #[test]
    fn jobexec_x86_nt5() {
        // SOURCE.md: "Windows NT 5.00.0000.1".
        let info = pe_info_file(&corpus("pe/jobexec.dll")).unwrap();
        assert_eq!(info.arch, Arch::X86);
        assert_eq!(info.file_version, Some([5, 0, 0, 1]));
    }

    #[test]
    fn mingw_built_pe_both_arches() {
        let dir = tempfile::tempdir().unwrap();
        for arch in [Arch::X86, Arch::X64] {
            let bytes = build_pe(dir.path(), arch, [5, 1, 2600, 5512]);
            let info = pe_info(&bytes).unwrap();
            assert_eq!(info.arch, arch);
            assert_eq!(
                info.file_version.map(version_string).as_deref(),
                Some("5.1.2600.5512")
            );
            assert_eq!(info.product_version, Some([5, 1, 2600, 5512]));
        }
    }

    #[test]
    fn truncated_and_garbage_are_errors() {
        let bytes = std::fs::read(corpus("pe/kernel32.dll")).unwrap();
        for cut in [0, 2, 64, 0x100, 0x400, 4096, bytes.len() / 2] {
            // Cutting off the resources must fail or report no version, never panic.
            if let Ok(info) = pe_info(&bytes[..cut]) {
                assert!(cut > 0x400, "cut at {cut} parsed: {info:?}");
            }
        }
        assert!(pe_info(&bytes[..0x40]).is_err());
        assert!(pe_info(&[0x4D, 0x5A, 0xFF, 0xFF]).is_err());
        assert!(pe_info(&vec![0x5A; 8192]).is_err());
        // Scribble over the resource area of a real DLL: no panic.
        let mut bad = std::fs::read(corpus("pe/shimeng.dll")).unwrap();
        for i in (0x400..bad.len()).step_by(7) {
            bad[i] = 0xFF;
        }
        let _ = pe_info(&bad);
        let missing = Path::new("/nonexistent/ntoskrnl.exe");
        let err = format!("{:#}", pe_info_file(missing).unwrap_err());
        assert!(err.contains("/nonexistent/ntoskrnl.exe"), "{err}");
    }

    #[test]
    fn version_string_format() {
        assert_eq!(version_string([5, 1, 2600, 5512]), "5.1.2600.5512");
    }
}
