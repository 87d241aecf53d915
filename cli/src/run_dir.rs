//! Run directories: config.json, arch.json, metrics.jsonl, weights.

use anyhow::{Context, Result};
use serde::Serialize;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A directory that a command writes its results into.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    /// Creates `path` (and parents) if needed.
    pub fn create(path: &Path) -> Result<RunDir> {
        fs::create_dir_all(path)
            .with_context(|| format!("cannot create run directory {}", path.display()))?;
        Ok(RunDir {
            path: path.to_path_buf(),
        })
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

/// Sets the number of worker threads for the whole process (`--threads`).
pub fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(t) = threads {
        if t == 0 {
            anyhow::bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("--threads: cannot configure the thread pool")?;
    }
    Ok(())
}
