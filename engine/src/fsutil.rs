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

/// A folder's list of files (one name a line) that are not part of what is written into it
/// and survive `write_dir_atomic`'s replacement of it: whoever owns them (a recipe stage: its
/// lock, log, key) names them here; this utility knows nothing about them.
pub const KEEP_LIST: &str = ".keep-on-replace";

/// Adds `names` to `dir`'s `KEEP_LIST`.
pub fn keep_on_replace(dir: &Path, names: &[&str]) -> Result<()> {
    let mut kept = kept_names(dir);
    for name in names {
        if !kept.iter().any(|k| k == name) {
            kept.push(name.to_string());
        }
    }
    write_atomic(&dir.join(KEEP_LIST), (kept.join("\n") + "\n").as_bytes())
}

fn kept_names(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join(KEEP_LIST)).unwrap_or_default().lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
}

/// Builds the folder `dir` under a temporary sibling name with `fill`, then renames it into
/// place (replacing an existing `dir`): readers see no folder or a whole one, and a failure
/// leaves nothing behind. The files a replaced `dir`'s `KEEP_LIST` names (and the list) move
/// into the new folder, still open.
pub fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_sibling(dir);
    let parent = tmp.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let _ = std::fs::remove_dir_all(&tmp);
    let result = std::fs::create_dir_all(&tmp).map_err(anyhow::Error::from).and_then(|()| fill(&tmp)).and_then(|()| {
        if dir.exists() {
            for name in kept_names(dir).iter().map(String::as_str).chain([KEEP_LIST]) {
                // A name with a path separator would reach outside the folder.
                if name.contains(['/', '\\']) || name == ".." {
                    continue;
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A replaced folder keeps what its keep list names (and the list), nothing else of the
    /// old folder; a name reaching outside the folder is not followed.
    #[test]
    fn a_replaced_folder_keeps_the_files_its_list_names() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("stage");
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["log.txt", "old-result.bin", "result.bin"] {
            std::fs::write(dir.join(name), "old").unwrap();
        }
        std::fs::write(root.path().join("outside"), "x").unwrap();
        keep_on_replace(&dir, &["log.txt", "missing.txt"]).unwrap();
        keep_on_replace(&dir, &["log.txt", "../outside"]).unwrap();
        write_dir_atomic(&dir, |tmp| Ok(std::fs::write(tmp.join("result.bin"), "new")?)).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, [KEEP_LIST, "log.txt", "result.bin"]);
        assert_eq!(std::fs::read_to_string(dir.join("result.bin")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(dir.join("log.txt")).unwrap(), "old");
        assert!(root.path().join("outside").exists());
        assert_eq!(kept_names(&dir), ["log.txt", "missing.txt", "../outside"]);
    }
}
