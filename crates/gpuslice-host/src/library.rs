//! Finding the interposer library, `libgpuslice.so`, that `gpuslice run` preloads and
//! that CDI specs mount into containers: `--lib`, else `GPUSLICE_LIB`, else next to the
//! running `gpuslice` (or in `../lib` from there). The result is checked to be an ELF
//! file whose path `LD_PRELOAD` can hold.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The variable that names the interposer library when `--lib` is not given.
pub const ENV_LIB: &str = "GPUSLICE_LIB";
/// The interposer's file name.
pub const LIB_NAME: &str = "libgpuslice.so";

/// Why the interposer library cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    /// The library that was asked for does not exist.
    #[error("{source_name} names {path}, which does not exist or is not a file")]
    LibMissing {
        /// `--lib` or `GPUSLICE_LIB`.
        source_name: String,
        /// The path.
        path: PathBuf,
    },
    /// No library was asked for, and none was found where it is installed.
    #[error("cannot find {LIB_NAME}: looked at {looked}; give its path with --lib or {ENV_LIB}")]
    LibNotFound {
        /// The places looked at.
        looked: String,
    },
    /// The library is not a shared object.
    #[error("{source_name}: {path} is not a shared library (no ELF header)")]
    LibNotElf {
        /// Where the path came from.
        source_name: String,
        /// The path.
        path: PathBuf,
    },
    /// The library path cannot be put into `LD_PRELOAD`.
    #[error(
        "{source_name}: the path {path:?} contains ':', whitespace or non-UTF-8 bytes, which LD_PRELOAD cannot hold; install the library elsewhere"
    )]
    LibUnusablePath {
        /// Where the path came from.
        source_name: String,
        /// The path.
        path: PathBuf,
    },
    /// A path could not be read.
    #[error("{source_name}: {path}: {source}")]
    Io {
        /// Where the path came from.
        source_name: String,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Finds the interposer: `--lib`, else `GPUSLICE_LIB`, else `libgpuslice.so` in the
/// folder of `exe` (the running `gpuslice`), else in `../lib` from there. The result is
/// absolute and canonical, and checked to be an ELF file whose path `LD_PRELOAD` can hold.
pub fn find_library(
    flag: Option<&Path>,
    env: Option<&OsStr>,
    exe: Option<&Path>,
) -> Result<PathBuf, LibraryError> {
    let (path, source_name) = if let Some(path) = flag {
        (existing(path, "--lib")?, "--lib")
    } else if let Some(path) = env.filter(|v| !v.is_empty()) {
        (existing(Path::new(path), ENV_LIB)?, ENV_LIB)
    } else {
        let dir = exe.and_then(Path::parent);
        let candidates: Vec<PathBuf> = match dir {
            Some(dir) => vec![
                dir.join(LIB_NAME),
                dir.join("..").join("lib").join(LIB_NAME),
            ],
            None => Vec::new(),
        };
        match candidates.iter().find(|p| p.is_file()) {
            Some(found) => (found.clone(), "the installed library"),
            None => {
                let looked = if candidates.is_empty() {
                    "nowhere (the path of gpuslice itself is unknown)".to_string()
                } else {
                    candidates
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(" and ")
                };
                return Err(LibraryError::LibNotFound { looked });
            }
        }
    };
    let io = |source| LibraryError::Io {
        source_name: source_name.into(),
        path: path.clone(),
        source,
    };
    let canonical = std::fs::canonicalize(&path).map_err(io)?;
    let mut magic = [0u8; 4];
    std::fs::File::open(&canonical)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                LibraryError::LibNotElf {
                    source_name: source_name.into(),
                    path: canonical.clone(),
                }
            } else {
                io(e)
            }
        })?;
    if magic != *b"\x7fELF" {
        return Err(LibraryError::LibNotElf {
            source_name: source_name.into(),
            path: canonical,
        });
    }
    match canonical.to_str() {
        Some(s) if !s.contains(|c: char| c == ':' || c.is_whitespace()) => Ok(canonical),
        _ => Err(LibraryError::LibUnusablePath {
            source_name: source_name.into(),
            path: canonical,
        }),
    }
}

fn existing(path: &Path, source_name: &str) -> Result<PathBuf, LibraryError> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(LibraryError::LibMissing {
            source_name: source_name.into(),
            path: path.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_lookup_order_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let bin = root.join("bin");
        let lib = root.join("lib");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&lib).unwrap();
        let exe = bin.join("gpuslice");
        let elf = b"\x7fELF rest of a shared object";

        // Nothing installed: the error says where it looked.
        let msg = find_library(None, None, Some(&exe))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(&bin.join(LIB_NAME).display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("--lib"), "{msg}");

        // ../lib is the second choice, next to the binary the first.
        std::fs::write(lib.join(LIB_NAME), elf).unwrap();
        assert_eq!(
            find_library(None, None, Some(&exe)).unwrap(),
            lib.join(LIB_NAME)
        );
        std::fs::write(bin.join(LIB_NAME), elf).unwrap();
        assert_eq!(
            find_library(None, None, Some(&exe)).unwrap(),
            bin.join(LIB_NAME)
        );

        // GPUSLICE_LIB beats the installed one, --lib beats both; both must exist.
        let other = root.join("other.so");
        std::fs::write(&other, elf).unwrap();
        let via_dots = root.join("bin/../other.so");
        assert_eq!(
            find_library(None, Some(via_dots.as_os_str()), Some(&exe)).unwrap(),
            other
        );
        let missing = root.join("missing.so");
        let msg = find_library(None, Some(missing.as_os_str()), Some(&exe))
            .unwrap_err()
            .to_string();
        assert!(msg.contains(ENV_LIB) && msg.contains("missing.so"), "{msg}");
        let msg = find_library(Some(&missing), Some(other.as_os_str()), Some(&exe))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("--lib") && msg.contains("missing.so"), "{msg}");

        // Not an ELF file, or a path LD_PRELOAD cannot hold: refused.
        let text = root.join("text.so");
        std::fs::write(&text, b"#!").unwrap();
        let err = find_library(Some(&text), None, None).unwrap_err();
        assert!(matches!(err, LibraryError::LibNotElf { .. }), "{err}");
        let spaced = root.join("with space.so");
        std::fs::write(&spaced, elf).unwrap();
        let err = find_library(Some(&spaced), None, None).unwrap_err();
        assert!(matches!(err, LibraryError::LibUnusablePath { .. }), "{err}");
    }
}
