//! PE files with real version resources, built with mingw-w64.

#![allow(unused_imports)]

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Arch {
    I686,
    X86_64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct PeSpec {
    pub(super) arch: Arch,
    pub(super) version: [u16; 4],
    pub(super) build_tag: &'static str,
    pub(super) name: &'static str,
    pub(super) desc: &'static str,
}

pub(super) static PE_CACHE: Mutex<Option<HashMap<PeSpec, Vec<u8>>>> = Mutex::new(None);

/// A tiny real PE (scripts/fixtures/tinype.c + tinype.rc) with a
/// VERSIONINFO of `spec.version`, built with mingw-w64 (once per process).
pub(super) fn pe(spec: &PeSpec) -> Result<Vec<u8>> {
    let mut cache = PE_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(b) = cache.get_or_insert_with(HashMap::new).get(spec) {
        return Ok(b.clone());
    }
    let (triple, pkg, entry) = match spec.arch {
        Arch::I686 => ("i686-w64-mingw32", "gcc-mingw-w64-i686-win32", "_entry"),
        Arch::X86_64 => ("x86_64-w64-mingw32", "gcc-mingw-w64-x86-64-win32", "entry"),
    };
    let gcc = tool(&format!("{triple}-gcc"), pkg)?;
    let windres = tool(
        &format!("{triple}-windres"),
        &format!(
            "binutils-mingw-w64-{}",
            if spec.arch == Arch::I686 {
                "i686"
            } else {
                "x86-64"
            }
        ),
    )?;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fixtures");
    let work = tempfile::tempdir().context("scratch folder for a PE")?;
    let [a, b, c, d] = spec.version;
    let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    fs::write(
        work.path().join("tinype-spec.h"),
        format!(
            "#define V1 {a}\n#define V2 {b}\n#define V3 {c}\n#define V4 {d}\n\
             #define VSTR {}\n#define PVSTR {}\n#define ORIGNAME {}\n#define DESC {}\n\
             #define PRODNAME {}\n#define TINYPE_TAG {}\n",
            q(&format!("{a}.{b}.{c}.{d} ({})", spec.build_tag)),
            q(&format!("{a}.{b}.{c}.{d}")),
            q(spec.name),
            q(spec.desc),
            q("Microsoft Windows Operating System"),
            q(spec.name),
        ),
    )?;
    let res = work.path().join("res.o");
    run(Command::new(&windres)
        .arg("-I")
        .arg(work.path())
        .arg("-O")
        .arg("coff")
        .arg("-o")
        .arg(&res)
        .arg(src.join("tinype.rc")))
    .context("compiling the version resource")?;
    let out = work.path().join(spec.name);
    run(Command::new(&gcc)
        .args(["-Os", "-ffreestanding", "-nostdlib", "-s"])
        .arg(format!("-Wl,-e,{entry}"))
        .arg("-Wl,--no-insert-timestamp")
        .arg("-I")
        .arg(work.path())
        .arg("-o")
        .arg(&out)
        .arg(src.join("tinype.c"))
        .arg(&res))
    .context("linking the PE")?;
    let bytes = fs::read(&out)?;
    cache
        .get_or_insert_with(HashMap::new)
        .insert(spec.clone(), bytes.clone());
    Ok(bytes)
}
