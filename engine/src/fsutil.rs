//! Atomic file writes: a reader (or a crash) never sees a half-written file.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A sibling path for temporary output: `NAME.tmp-PID`.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_sibling(path);
    let result = (|| -> Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// Builds the folder `dir` under a temporary sibling name with `fill`, then renames it into
/// place (replacing an existing `dir`): readers see no folder or a whole one, and a failure
/// leaves nothing behind. A recipe stage's own files in a replaced `dir` (its log, lock,
/// key and config: `recipe::stage::STAGE_FILES`) move into the new folder, still open.
pub fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_sibling(dir);
    let parent = tmp.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let _ = std::fs::remove_dir_all(&tmp);
    let result = std::fs::create_dir_all(&tmp).map_err(anyhow::Error::from).and_then(|()| fill(&tmp)).and_then(|()| {
        if dir.exists() {
            for name in crate::recipe::stage::STAGE_FILES {
                if dir.join(name).exists() && !tmp.join(name).exists() {
                    std::fs::rename(dir.join(name), tmp.join(name))?;
                }
            }
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::rename(&tmp, dir)?;
        Ok(())
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.with_context(|| format!("cannot write {}", dir.display()))
}

/// The SHA-256 of a file's contents, as lowercase hex (read in 1 MiB pieces).
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}
