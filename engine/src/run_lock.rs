//! One writer per folder. Two processes writing one run folder (two `btx train` with the same
//! `--out`, two `btx recipe run` on one run folder, a Slurm job resubmitted while the old one
//! still runs) would truncate each other's metrics and overwrite each other's checkpoints.
//! So every writer first takes an exclusive lock on a file in the folder it writes, and holds
//! it until it exits.
//!
//! The lock is the operating system's (std's `File::try_lock`: `flock` on Unix, `LockFileEx`
//! on Windows), so it is released when its process ends however it ends: a SIGKILL or a
//! crashed node never leaves a stale lock behind. The file also records who holds it, so the
//! refused process can say which process to wait for. (On NFS, Linux emulates `flock` with
//! byte-range locks, which the server arbitrates across nodes.)

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The lock of `btx train` on its `--out` folder.
pub const TRAIN_LOCK: &str = "train.lock";
/// The lock of a recipe stage on its stage folder (held around the stage's own process).
pub const STAGE_LOCK: &str = "stage.lock";
/// The lock of `btx recipe run` on its run folder.
pub const RECIPE_LOCK: &str = "recipe.lock";

/// Who holds a lock, as its file records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockHolder {
    pub pid: u32,
    pub host: String,
    /// When the holder took the lock (RFC 3339, UTC).
    pub started: String,
    pub command: String,
}

/// An exclusive lock on a folder, released when dropped or when the process ends.
#[derive(Debug)]
pub struct FolderLock {
    path: PathBuf,
    // Held open for the lock's lifetime: closing it releases the lock.
    _file: File,
}

impl FolderLock {
    /// Takes the lock `dir/name`, creating the folder if needed; fails at once, naming the
    /// holder, if another process holds it.
    pub fn acquire(dir: &Path, name: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(name);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => bail!("{}", refusal(dir, &path, read_holder(&mut file).as_ref())),
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        let holder = LockHolder {
            pid: std::process::id(),
            host: hostname(),
            started: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
        };
        // Rewritten in place (the file itself is the lock; replacing it would drop the lock).
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(serde_json::to_string_pretty(&holder)?.as_bytes())?;
        file.flush()?;
        Ok(Self { path, _file: file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn read_holder(file: &mut File) -> Option<LockHolder> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

fn refusal(dir: &Path, path: &Path, holder: Option<&LockHolder>) -> String {
    let who = match holder {
        Some(h) => format!("process {} on host {} (started {}: `{}`)", h.pid, h.host, h.started, h.command),
        None => "another process".to_string(),
    };
    let stop = holder.map(|h| format!(" (`kill {}` on {})", h.pid, h.host)).unwrap_or_default();
    format!(
        "{} is in use: {who} holds its lock {}. Two writers would overwrite each other's \
         checkpoints and metrics, so this one stops. Wait for that process to finish or stop it{stop} \
         and run this again (a finished or killed holder releases the lock by itself), or write to \
         another folder.",
        dir.display(),
        path.display()
    )
}

/// This machine's host name (for the lock holder's record).
fn hostname() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
        // fails.
        if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            return String::from_utf8_lossy(&buf[..end]).into_owned();
        }
    }
    std::env::var("COMPUTERNAME").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_folder_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = FolderLock::acquire(dir.path(), TRAIN_LOCK).unwrap();
        let err = FolderLock::acquire(dir.path(), TRAIN_LOCK).unwrap_err().to_string();
        assert!(err.contains(&format!("process {}", std::process::id())), "{err}");
        assert!(err.contains("is in use"), "{err}");
        // Another lock name in the same folder is another lock.
        let _stage = FolderLock::acquire(dir.path(), STAGE_LOCK).unwrap();
        drop(first);
        FolderLock::acquire(dir.path(), TRAIN_LOCK).expect("released on drop");
    }
}
