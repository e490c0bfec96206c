//! The files of a run directory: atomic writes, the temporary files a crash can leave, and
//! the lock that keeps two processes off one run.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::{Context, Result};
use cardinal_results::is_temp_name;

/// Writes a file so that a crash leaves either the old or the new contents, never half.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(cardinal_results::write_atomic(path, bytes)?)
}

/// Removes the temporary files that a process killed inside `write_atomic` left in `dir`
/// (a partial checkpoint of a large model is hundreds of MB). Only call it while holding
/// the directory's [`RunLock`]: then no other process is writing there. Returns the names
/// removed.
pub fn remove_stale_temp_files(dir: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_temp_name(&name) && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
            removed.push(name);
        }
    }
    removed.sort();
    Ok(removed)
}

/// An advisory lock on a run directory (the file `lock` in it), held while a process
/// trains the run and released when it exits, however it exits. The file names the holder.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// What [`RunLock::acquire`] found.
#[derive(Debug)]
pub enum Locked {
    Acquired(RunLock),
    /// Another process holds the lock; the text names it (pid, host, since when).
    HeldBy(String),
}

impl RunLock {
    /// Takes the lock of `dir` without waiting.
    pub fn acquire(dir: &Path) -> Result<Locked> {
        let path = dir.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Ok(Locked::HeldBy(if holder.is_empty() {
                    "another process".into()
                } else {
                    holder.to_string()
                }));
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "this host".into());
        file.set_len(0)?;
        file.rewind()?;
        write!(
            file,
            "pid {} on {host} since {}",
            std::process::id(),
            crate::provenance::utc_now()
        )?;
        file.flush()?;
        Ok(Locked::Acquired(RunLock { _file: file }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cardinal_results::temp_path;

    #[test]
    fn stale_temporary_files_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let keep = [
            "checkpoint.safetensors",
            "metrics.csv",
            "notes.tmp",
            ".hidden",
        ];
        for name in keep {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        // What a process killed inside write_atomic leaves: the temp file of this naming.
        let stale = temp_path(&dir.path().join("checkpoint.safetensors"));
        std::fs::write(&stale, b"partial").unwrap();
        let removed = remove_stale_temp_files(dir.path()).unwrap();
        assert_eq!(removed.len(), 1, "{removed:?}");
        assert!(!stale.exists());
        for name in keep {
            assert!(dir.path().join(name).exists(), "{name} was removed");
        }
    }

    #[test]
    fn a_second_lock_on_one_directory_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = match RunLock::acquire(dir.path()).unwrap() {
            Locked::Acquired(lock) => lock,
            Locked::HeldBy(who) => panic!("fresh directory held by {who}"),
        };
        // flock locks belong to the open file description: a second open, as by a second
        // process, is refused while the first is held.
        match RunLock::acquire(dir.path()).unwrap() {
            Locked::HeldBy(who) => {
                assert!(
                    who.contains(&format!("pid {}", std::process::id())),
                    "{who}"
                )
            }
            Locked::Acquired(_) => panic!("the lock was taken twice"),
        }
        drop(first);
        assert!(matches!(
            RunLock::acquire(dir.path()).unwrap(),
            Locked::Acquired(_)
        ));
    }
}
