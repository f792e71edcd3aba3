//! A checkpoint's files sealed by their hashes. Every checkpoint folder the engine writes
//! gets `checksums.json` (each file's SHA-256, computed as the folder is built, before it is
//! renamed into place); a checkpoint loaded later (a resume, a branch, a merge input, an
//! evaluation) is checked against it first. A file whose bytes changed since (a bad disk, a
//! copy between machines cut short) is then an error that names it, where otherwise a
//! header that still parses would load silently wrong weights.
//!
//! Folders without `checksums.json` (imported from Hugging Face, or written before this
//! existed) load unchecked.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::fsutil::{sha256_file, write_atomic};

pub const CHECKSUMS_FILE: &str = "checksums.json";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checksums {
    /// File name (in the checkpoint folder) -> SHA-256 of its bytes, lowercase hex.
    pub sha256: BTreeMap<String, String>,
}

/// Hashes every file of the checkpoint folder `dir` and writes `dir/checksums.json`.
pub fn seal(dir: &Path) -> Result<()> {
    let mut sums = Checksums::default();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == CHECKSUMS_FILE || name.starts_with('.') || !entry.file_type()?.is_file() {
            continue;
        }
        sums.sha256.insert(name, sha256_file(&entry.path())?);
    }
    write_atomic(&dir.join(CHECKSUMS_FILE), serde_json::to_string_pretty(&sums)?.as_bytes())
}

/// Checks every file `dir/checksums.json` lists against its recorded hash (nothing to check
/// if the folder has none).
pub fn verify(dir: &Path) -> Result<()> {
    let path = dir.join(CHECKSUMS_FILE);
    if !path.is_file() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let sums: Checksums = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid checksum list (expected {{\"sha256\": {{FILE: HASH}}}})", path.display()))?;
    for (name, want) in &sums.sha256 {
        let file = dir.join(name);
        if !file.is_file() {
            bail!(
                "checkpoint {} is incomplete: {} is missing (its {CHECKSUMS_FILE} lists it); \
                 copy the whole folder again, or use an earlier checkpoint",
                dir.display(),
                file.display()
            );
        }
        let got = sha256_file(&file)?;
        if &got != want {
            bail!(
                "checkpoint file {} is corrupt: its SHA-256 is {got}, but it was {want} when the \
                 checkpoint was written ({}). Its bytes changed since (a bad disk, or a copy cut \
                 short): copy it again from its source, or use an earlier checkpoint of the run \
                 (training keeps the last `keep_last`)",
                file.display(),
                path.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_byte_or_a_missing_file_fails_verification_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.safetensors"), [1u8, 2, 3, 4]).unwrap();
        std::fs::write(dir.path().join("model.ron"), "()").unwrap();
        seal(dir.path()).unwrap();
        verify(dir.path()).unwrap();

        std::fs::write(dir.path().join("model.safetensors"), [1u8, 2, 3, 5]).unwrap();
        let err = verify(dir.path()).unwrap_err().to_string();
        assert!(err.contains("model.safetensors is corrupt"), "{err}");

        std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
        let err = verify(dir.path()).unwrap_err().to_string();
        assert!(err.contains("model.safetensors is missing"), "{err}");
    }
}
