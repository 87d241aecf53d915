//! Run directories: config.json, arch.json, metrics.jsonl, weights.
//!
//! A directory that sprout writes a run into is marked by [`MARKER`]
//! (`run.json`, holding the command and the sprout version), written before
//! anything else, and guarded while a process works in it by an advisory lock
//! on [`LOCK`] (`.lock`, holding the holder's pid). [`RunDir::claim`] starts or
//! restarts a run: it refuses a directory holding anything but a run of the
//! same command (unless forced) and takes the lock; [`RunDir::lock_existing`]
//! takes the lock of a run being resumed.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// File marking a directory as a sprout run: [`RunMarker`] as JSON.
pub const MARKER: &str = "run.json";
/// File that the process working in a run directory holds locked.
pub const LOCK: &str = ".lock";

/// What [`MARKER`] holds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RunMarker {
    /// The command that writes the run: `train`, `grow`, ...
    pub command: String,
    /// The sprout version that started it.
    pub version: String,
}

/// A directory that a command writes its results into.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
}

/// An advisory exclusive lock on a run directory's [`LOCK`] file, held until
/// dropped (or the process ends). The file holds the holder's pid, so that a
/// second process is told who is using the directory.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
}

impl RunLock {
    /// Locks `dir/.lock` (creating it), or fails with "`dir` is in use by
    /// process `pid`" when another process holds it.
    fn acquire(dir: &Path) -> Result<RunLock> {
        let path = dir.join(LOCK);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                let pid = if pid.is_empty() { "unknown" } else { pid };
                bail!("{} is in use by process {pid}", dir.display());
            }
            Err(fs::TryLockError::Error(e)) => {
                bail!("{}: cannot lock: {e}", path.display());
            }
        }
        let written = (|| -> std::io::Result<()> {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            writeln!(file, "{}", std::process::id())?;
            file.flush()
        })();
        written.with_context(|| format!("cannot write {}", path.display()))?;
        Ok(RunLock { file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// The command recorded in `dir`'s [`MARKER`]: `Ok(None)` when there is no
/// marker, an error when it exists but cannot be read as one.
pub fn run_command(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(MARKER);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => bail!("{}: {e}", path.display()),
    };
    let marker: RunMarker = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a sprout run marker", path.display()))?;
    Ok(Some(marker.command))
}

/// Whether `dir` holds nothing but (possibly) its lock file. A missing
/// directory is empty.
fn is_empty(dir: &Path) -> Result<bool> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => bail!("{}: {e}", dir.display()),
    };
    for e in entries {
        let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
        if e.file_name() != LOCK {
            return Ok(false);
        }
    }
    Ok(true)
}

impl RunDir {
    /// Creates `path` (and parents) if needed, without checking or marking
    /// it; commands that own their directory use [`RunDir::claim`].
    pub fn create(path: &Path) -> Result<RunDir> {
        fs::create_dir_all(path)
            .with_context(|| format!("cannot create run directory {}", path.display()))?;
        Ok(RunDir {
            path: path.to_path_buf(),
        })
    }

    /// Claims `path` for a new run of `command` (`train`, `grow`, ...):
    ///
    /// - `path` must be a directory that is missing, empty, or marked by
    ///   [`MARKER`] as a run of the same `command`; anything else is refused
    ///   with "`path` is not empty and not a sprout `command` run; choose
    ///   another --out or pass --force", unless `force` is set;
    /// - the directory is created and locked (see [`RunLock`]; a directory in
    ///   use by another process is refused whatever `force` says);
    /// - the marker is written before anything else.
    ///
    /// Nothing is written when the claim is refused. The caller checks
    /// everything else (flags, data, backend) before claiming, and keeps the
    /// lock for as long as it writes into the directory.
    pub fn claim(path: &Path, command: &str, force: bool) -> Result<(RunDir, RunLock)> {
        if path.exists() && !path.is_dir() {
            bail!("{} exists and is not a directory", path.display());
        }
        let owned = match run_command(path) {
            Ok(Some(c)) => c == command,
            Ok(None) | Err(_) => false,
        };
        if !owned && !is_empty(path)? && !force {
            bail!(
                "{} is not empty and not a sprout {command} run; choose another --out or pass --force",
                path.display()
            );
        }
        let run = RunDir::create(path)?;
        let lock = RunLock::acquire(path)?;
        run.write_json(
            MARKER,
            &RunMarker {
                command: command.to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
        )?;
        Ok((run, lock))
    }

    /// Locks the existing run directory `path` (to resume it); errors if it
    /// is not a directory or another process holds it. The marker is not
    /// checked here: see [`run_command`].
    pub fn lock_existing(path: &Path) -> Result<RunLock> {
        if !path.is_dir() {
            bail!("{}: not a run directory", path.display());
        }
        RunLock::acquire(path)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes pretty JSON atomically.
    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(value)?;
        bytes.push(b'\n');
        crate::weights::write_atomic(&self.file(name), &bytes)
    }

    /// Appends one JSON object as a line.
    pub fn append_jsonl<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let path = self.file(name);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut line = serde_json::to_vec(value)?;
        line.push(b'\n');
        f.write_all(&line)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

/// The most worker threads `--threads` accepts: four per core the machine
/// reports (more only add contention; tens of thousands exhaust the system).
pub fn max_threads() -> (usize, usize) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores, cores.saturating_mul(4))
}

/// Sets the number of worker threads for the whole process (`--threads`).
/// Refuses 0 and more than [`max_threads`].
pub fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(t) = threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        let (cores, max) = max_threads();
        if t > max {
            bail!("--threads {t} is more than 4 per core ({cores} cores, at most {max})");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("--threads: cannot configure the thread pool")?;
    }
    Ok(())
}

/// 64-bit FNV-1a, fed in pieces: a fingerprint of data (not cryptographic).
#[derive(Clone, Copy, Debug)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    /// Feeds `bytes`.
    pub fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }

    /// Feeds `v` as 8 little-endian bytes.
    pub fn write_u64(&mut self, v: u64) {
        self.write(&v.to_le_bytes());
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::tests::TempDir;

    #[test]
    fn claim_marks_locks_and_refuses_foreign_directories() {
        let dir = TempDir::new("run-dir");
        let run_path = dir.0.join("a/b");
        let (run, lock) = RunDir::claim(&run_path, "train", false).unwrap();
        assert_eq!(run_command(&run.path).unwrap().as_deref(), Some("train"));
        assert_eq!(
            fs::read_to_string(lock.path()).unwrap().trim(),
            std::process::id().to_string()
        );
        // A second claim while the lock is held names the holder.
        let m = RunDir::claim(&run_path, "train", false)
            .unwrap_err()
            .to_string();
        assert_eq!(
            m,
            format!(
                "{} is in use by process {}",
                run_path.display(),
                std::process::id()
            )
        );
        let m = RunDir::lock_existing(&run_path).unwrap_err().to_string();
        assert!(m.contains("is in use by process"), "{m}");
        drop(lock);
        // Released: the same command may reuse it, another may not.
        let (_, lock) = RunDir::claim(&run_path, "train", false).unwrap();
        drop(lock);
        let m = RunDir::claim(&run_path, "grow", false)
            .unwrap_err()
            .to_string();
        assert_eq!(
            m,
            format!(
                "{} is not empty and not a sprout grow run; choose another --out or pass --force",
                run_path.display()
            )
        );
        assert_eq!(run_command(&run_path).unwrap().as_deref(), Some("train"));
        let (_, lock) = RunDir::claim(&run_path, "grow", true).unwrap();
        assert_eq!(run_command(&run_path).unwrap().as_deref(), Some("grow"));
        drop(lock);
        let _held = RunDir::lock_existing(&run_path).unwrap();

        // Unmarked, non-empty: refused and left untouched.
        let other = dir.0.join("other");
        fs::create_dir_all(&other).unwrap();
        fs::write(other.join("notes.txt"), "mine").unwrap();
        assert!(RunDir::claim(&other, "train", false).is_err());
        assert_eq!(fs::read_dir(&other).unwrap().count(), 1);
        // A file is not a directory.
        let m = RunDir::claim(&other.join("notes.txt"), "train", true)
            .unwrap_err()
            .to_string();
        assert!(m.contains("not a directory"), "{m}");
        assert!(RunDir::lock_existing(&dir.0.join("none")).is_err());
    }

    #[test]
    fn threads_are_bounded_by_the_cores() {
        let (cores, max) = max_threads();
        assert_eq!(max, 4 * cores);
        let m = set_threads(Some(max + 1)).unwrap_err().to_string();
        assert!(
            m.contains("--threads") && m.contains(&format!("{cores} cores")),
            "{m}"
        );
        assert!(set_threads(Some(0)).is_err());
    }

    #[test]
    fn fnv_known_values() {
        let mut h = Fnv64::default();
        assert_eq!(h.finish(), 0xcbf2_9ce4_8422_2325);
        h.write(b"a");
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
        let mut g = Fnv64::default();
        g.write(b"foobar");
        assert_eq!(g.finish(), 0x8594_4171_f739_67e8);
    }
}
