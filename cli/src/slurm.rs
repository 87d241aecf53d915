//! Sweeps on a Slurm cluster: the flags of a job array and the sbatch script
//! that runs one manifest line per array task with `sprout run-job`.
//!
//! A task that is preempted or requeued simply runs `run-job` again on the
//! same line: the run directory checkpoints after every phase and `run-job`
//! resumes it, or exits at once when its completion marker is there. The
//! script therefore asks for `--requeue` and appends to its task's log.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

/// Flags of the Slurm job array written by `--emit-slurm`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct SlurmArgs {
    /// CPUs of each array task (one run); run-job gets as many threads.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub cpus_per_task: usize,
    /// Time limit of each task, in a format Slurm takes: MM, MM:SS,
    /// HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS.
    #[arg(long, default_value = "04:00:00", value_name = "HH:MM:SS")]
    pub slurm_time: String,
    /// Partition (queue) to submit to [default: the cluster's default].
    #[arg(long, value_name = "NAME")]
    pub partition: Option<String>,
    /// Memory of each task, e.g. 8G [default: the cluster's default].
    #[arg(long, value_name = "SIZE")]
    pub mem: Option<String>,
    /// One GPU per task (`--gres=gpu:1`); implied by --backend gpu.
    #[arg(long)]
    pub gpus: bool,
    /// Directory of the per-task logs [default: OUT/slurm-logs].
    #[arg(long, value_name = "DIR")]
    pub slurm_log_dir: Option<PathBuf>,
    /// Run at most N tasks of the array at once.
    #[arg(long, value_name = "N")]
    pub max_parallel: Option<usize>,
}

impl Default for SlurmArgs {
    fn default() -> Self {
        SlurmArgs {
            cpus_per_task: 2,
            slurm_time: "04:00:00".into(),
            partition: None,
            mem: None,
            gpus: false,
            slurm_log_dir: None,
            max_parallel: None,
        }
    }
}

impl SlurmArgs {
    /// Where the per-task logs go for a sweep writing to `out`.
    pub fn log_dir(&self, out: &Path) -> PathBuf {
        self.slurm_log_dir
            .clone()
            .unwrap_or_else(|| out.join("slurm-logs"))
    }
}

/// The sbatch script of a job array with one task per manifest line (`runs`
/// lines): task I runs `sprout_bin run-job --manifest manifest --index I`
/// with as many threads as the task has CPUs, and logs to
/// `log_dir/<job>_<task>.out`, appending when the task is requeued.
///
/// Relative paths are taken from the current directory, and the job runs in
/// it, so relative run directories in the manifest mean the same on the
/// cluster. `log_dir` must exist before the script is submitted (Slurm does
/// not create it); [`write_sbatch_script`] creates it.
pub fn sbatch_script(
    args: &SlurmArgs,
    sprout_bin: &Path,
    manifest: &Path,
    runs: usize,
    log_dir: &Path,
    gpus: bool,
) -> Result<String> {
    if runs == 0 {
        bail!("the manifest has no runs: nothing to submit");
    }
    if args.cpus_per_task == 0 {
        bail!("--cpus-per-task: must be at least 1");
    }
    check_time(&args.slurm_time)?;
    if args.max_parallel == Some(0) {
        bail!("--max-parallel: must be at least 1");
    }
    if let Some(p) = &args.partition {
        check_partition(p)?;
    }
    if let Some(m) = &args.mem {
        check_mem(m)?;
    }
    let workdir = std::env::current_dir().context("reading the current directory")?;
    let sprout_bin = absolute(sprout_bin)?;
    let manifest = absolute(manifest)?;
    let log_dir = absolute(log_dir)?;
    let log_dir = sbatch_path(&log_dir, "--slurm-log-dir")?;

    let mut s = String::from("#!/bin/bash\n");
    s.push_str("# A sprout sweep as a Slurm job array: task I runs line I of the manifest.\n");
    s.push_str("# A requeued or preempted task resumes its run; a finished one exits at once.\n");
    s.push_str("#SBATCH --job-name=sprout-sweep\n");
    s.push_str(&format!("#SBATCH --array=0-{}", runs - 1));
    if let Some(n) = args.max_parallel {
        s.push_str(&format!("%{n}"));
    }
    s.push('\n');
    s.push_str("#SBATCH --ntasks=1\n");
    s.push_str(&format!("#SBATCH --cpus-per-task={}\n", args.cpus_per_task));
    s.push_str(&format!("#SBATCH --time={}\n", args.slurm_time));
    if let Some(p) = &args.partition {
        s.push_str(&format!("#SBATCH --partition={p}\n"));
    }
    if let Some(m) = &args.mem {
        s.push_str(&format!("#SBATCH --mem={m}\n"));
    }
    if gpus || args.gpus {
        s.push_str("#SBATCH --gres=gpu:1\n");
    }
    s.push_str("#SBATCH --requeue\n");
    s.push_str(&format!("#SBATCH --output=\"{log_dir}/%A_%a.out\"\n"));
    s.push_str("#SBATCH --open-mode=append\n");
    s.push_str("set -euo pipefail\n");
    s.push_str(&format!(
        "cd -- {}\n",
        shell_quote(&workdir, "the current directory")?
    ));
    s.push_str(&format!(
        "exec {} run-job --manifest {} --index \"$SLURM_ARRAY_TASK_ID\" --threads \"$SLURM_CPUS_PER_TASK\"\n",
        shell_quote(&sprout_bin, "the path of the sprout binary")?,
        shell_quote(&manifest, "the path of the manifest")?,
    ));
    Ok(s)
}

/// Writes [`sbatch_script`] to `file` (executable) and creates `log_dir`,
/// which Slurm needs to exist when a task starts.
pub fn write_sbatch_script(
    args: &SlurmArgs,
    sprout_bin: &Path,
    manifest: &Path,
    runs: usize,
    log_dir: &Path,
    gpus: bool,
    file: &Path,
) -> Result<()> {
    let script = sbatch_script(args, sprout_bin, manifest, runs, log_dir, gpus)?;
    std::fs::create_dir_all(log_dir)
        .with_context(|| format!("creating the log directory {}", log_dir.display()))?;
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(file, script).with_context(|| format!("writing {}", file.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", file.display()))?;
    }
    Ok(())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("making {} absolute", p.display()))
}

/// `p` in single quotes for bash, with every `'` written as `'\''`.
fn shell_quote(p: &Path, what: &str) -> Result<String> {
    let s = p
        .to_str()
        .with_context(|| format!("{what} is not UTF-8: {}", p.display()))?;
    if s.contains('\n') || s.contains('\r') {
        bail!("{what} holds a line break: {s:?}");
    }
    Ok(format!("'{}'", s.replace('\'', r"'\''")))
}

/// `p` for a double-quoted `#SBATCH` value: sbatch honours no escapes there
/// and expands `%` patterns in file names, so those characters are refused.
fn sbatch_path(p: &Path, what: &str) -> Result<String> {
    let s = p
        .to_str()
        .with_context(|| format!("{what}: {} is not UTF-8", p.display()))?;
    if let Some(c) = s
        .chars()
        .find(|c| matches!(c, '\n' | '\r' | '"' | '%' | '\\'))
    {
        bail!("{what}: {s:?} holds {c:?}, which an #SBATCH line cannot carry");
    }
    Ok(s.to_string())
}

/// Slurm's time formats: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
fn check_time(t: &str) -> Result<()> {
    let bad = || {
        anyhow::anyhow!(
            "--slurm-time: '{t}' is not a Slurm time (expected MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS, e.g. 04:00:00)"
        )
    };
    let num = |s: &str| -> Result<u64> {
        if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    let (days, clock) = match t.split_once('-') {
        Some((d, rest)) => (Some(num(d)?), rest),
        None => (None, t),
    };
    let parts = clock.split(':').map(num).collect::<Result<Vec<u64>>>()?;
    // Fields after the first are minutes or seconds, so below 60.
    let sexagesimal = |xs: &[u64]| xs.iter().all(|&x| x < 60);
    let seconds = match (days, parts.as_slice()) {
        (None, [m]) => m * 60,
        (None, [m, s]) if sexagesimal(&[*s]) => m * 60 + s,
        (None, [h, m, s]) if sexagesimal(&[*m, *s]) => h * 3600 + m * 60 + s,
        (Some(d), [h]) if *h < 24 => d * 86400 + h * 3600,
        (Some(d), [h, m]) if *h < 24 && sexagesimal(&[*m]) => d * 86400 + h * 3600 + m * 60,
        (Some(d), [h, m, s]) if *h < 24 && sexagesimal(&[*m, *s]) => {
            d * 86400 + h * 3600 + m * 60 + s
        }
        _ => return Err(bad()),
    };
    if seconds == 0 {
        bail!("--slurm-time: '{t}' is no time at all (give the limit of one task, e.g. 04:00:00)");
    }
    Ok(())
}

/// Partition names, or a comma-separated list of them.
fn check_partition(p: &str) -> Result<()> {
    let ok = |name: &str| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    if !p.split(',').all(ok) {
        bail!("--partition: '{p}' is not a partition name (letters, digits, '_', '-', '.'; several separated by commas)");
    }
    Ok(())
}

/// A memory size as sbatch takes it: digits with an optional K, M, G or T.
fn check_mem(m: &str) -> Result<()> {
    let digits = m.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    let suffix = m.len() - digits.len();
    if digits.is_empty()
        || suffix > 1
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || digits.bytes().all(|b| b == b'0')
    {
        bail!("--mem: '{m}' is not a memory size (digits with an optional K, M, G or T, e.g. 8G)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        slurm: SlurmArgs,
    }

    fn parse(flags: &[&str]) -> SlurmArgs {
        let mut argv = vec!["sprout"];
        argv.extend_from_slice(flags);
        Cli::try_parse_from(argv).unwrap().slurm
    }

    fn script(args: &SlurmArgs, runs: usize, gpus: bool) -> Result<String> {
        sbatch_script(
            args,
            Path::new("/opt/sprout/bin/sprout"),
            Path::new("/data/sweep/manifest.jsonl"),
            runs,
            Path::new("/data/sweep/slurm-logs"),
            gpus,
        )
    }

    fn err(args: &SlurmArgs) -> String {
        format!("{:#}", script(args, 4, false).unwrap_err())
    }

    #[test]
    fn defaults_match_the_flags() {
        assert_eq!(parse(&[]), SlurmArgs::default());
        let a = parse(&[
            "--cpus-per-task",
            "8",
            "--slurm-time",
            "1-00:00:00",
            "--partition",
            "gpu",
            "--mem",
            "16G",
            "--gpus",
            "--slurm-log-dir",
            "/logs",
            "--max-parallel",
            "3",
        ]);
        assert_eq!(a.cpus_per_task, 8);
        assert_eq!(a.slurm_time, "1-00:00:00");
        assert_eq!(a.partition.as_deref(), Some("gpu"));
        assert_eq!(a.mem.as_deref(), Some("16G"));
        assert!(a.gpus);
        assert_eq!(a.log_dir(Path::new("/out")), PathBuf::from("/logs"));
        assert_eq!(a.max_parallel, Some(3));
        assert_eq!(
            SlurmArgs::default().log_dir(Path::new("/out")),
            PathBuf::from("/out/slurm-logs")
        );
    }

    #[test]
    fn default_script() {
        let cwd = std::env::current_dir().unwrap();
        let expected = format!(
            "#!/bin/bash
# A sprout sweep as a Slurm job array: task I runs line I of the manifest.
# A requeued or preempted task resumes its run; a finished one exits at once.
#SBATCH --job-name=sprout-sweep
#SBATCH --array=0-11
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --output=\"/data/sweep/slurm-logs/%A_%a.out\"
#SBATCH --open-mode=append
set -euo pipefail
cd -- '{}'
exec '/opt/sprout/bin/sprout' run-job --manifest '/data/sweep/manifest.jsonl' --index \"$SLURM_ARRAY_TASK_ID\" --threads \"$SLURM_CPUS_PER_TASK\"
",
            cwd.display()
        );
        assert_eq!(script(&SlurmArgs::default(), 12, false).unwrap(), expected);
    }

    #[test]
    fn optional_directives() {
        let a = SlurmArgs {
            cpus_per_task: 16,
            slurm_time: "2-12".into(),
            partition: Some("long,short".into()),
            mem: Some("8G".into()),
            gpus: false,
            slurm_log_dir: None,
            max_parallel: Some(4),
        };
        let s = script(&a, 1, true).unwrap();
        for line in [
            "#SBATCH --array=0-0%4\n",
            "#SBATCH --cpus-per-task=16\n",
            "#SBATCH --time=2-12\n",
            "#SBATCH --partition=long,short\n",
            "#SBATCH --mem=8G\n",
            "#SBATCH --gres=gpu:1\n",
        ] {
            assert!(s.contains(line), "missing {line:?} in\n{s}");
        }
        // The directives come before the first command, or sbatch ignores them.
        let first_command = s.find("set -euo").unwrap();
        assert!(s.rfind("#SBATCH").unwrap() < first_command);

        let plain = script(&SlurmArgs::default(), 3, false).unwrap();
        assert!(plain.contains("#SBATCH --array=0-2\n"), "{plain}");
        for absent in ["--partition", "--mem", "--gres"] {
            assert!(
                !plain.contains(&format!("#SBATCH {absent}")),
                "unexpected {absent} in\n{plain}"
            );
        }
        let flag = SlurmArgs {
            gpus: true,
            ..SlurmArgs::default()
        };
        assert!(script(&flag, 3, false)
            .unwrap()
            .contains("#SBATCH --gres=gpu:1\n"));
    }

    #[test]
    fn paths_are_quoted_for_the_shell() {
        let s = sbatch_script(
            &SlurmArgs::default(),
            Path::new("/opt/my tools/sprout"),
            Path::new("/data/it's $HOME/`x`/manifest.jsonl"),
            2,
            Path::new("/data/log dir"),
            false,
        )
        .unwrap();
        assert!(s.contains("exec '/opt/my tools/sprout' run-job --manifest '/data/it'\\''s $HOME/`x`/manifest.jsonl' --index"));
        assert!(s.contains("#SBATCH --output=\"/data/log dir/%A_%a.out\"\n"));
        // bash reads the quoted words back unchanged.
        let exec = s.lines().find(|l| l.starts_with("exec ")).unwrap();
        let echo = exec
            .replacen("exec ", "printf '%s\\n' ", 1)
            .replace("\"$SLURM_ARRAY_TASK_ID\"", "7")
            .replace("\"$SLURM_CPUS_PER_TASK\"", "2");
        if let Ok(out) = std::process::Command::new("bash")
            .args(["-c", &echo])
            .output()
        {
            let words = String::from_utf8(out.stdout).unwrap();
            assert_eq!(
                words,
                "/opt/my tools/sprout\nrun-job\n--manifest\n/data/it's $HOME/`x`/manifest.jsonl\n--index\n7\n--threads\n2\n"
            );
        }
    }

    #[test]
    fn relative_paths_become_absolute() {
        let cwd = std::env::current_dir().unwrap();
        let s = sbatch_script(
            &SlurmArgs::default(),
            Path::new("target/release/sprout"),
            Path::new("sweep/manifest.jsonl"),
            2,
            Path::new("sweep/slurm-logs"),
            false,
        )
        .unwrap();
        let c = cwd.display();
        assert!(s.contains(&format!(
            "exec '{c}/target/release/sprout' run-job --manifest '{c}/sweep/manifest.jsonl'"
        )));
        assert!(s.contains(&format!(
            "#SBATCH --output=\"{c}/sweep/slurm-logs/%A_%a.out\""
        )));
    }

    #[test]
    fn no_runs_is_an_error() {
        let e = format!("{:#}", script(&SlurmArgs::default(), 0, false).unwrap_err());
        assert!(e.contains("no runs"), "{e}");
    }

    #[test]
    fn zero_cpus_names_the_flag() {
        let e = err(&SlurmArgs {
            cpus_per_task: 0,
            ..SlurmArgs::default()
        });
        assert_eq!(e, "--cpus-per-task: must be at least 1");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn zero_max_parallel_names_the_flag() {
        let e = err(&SlurmArgs {
            max_parallel: Some(0),
            ..SlurmArgs::default()
        });
        assert_eq!(e, "--max-parallel: must be at least 1");
    }

    #[test]
    fn slurm_time_formats() {
        for good in [
            "30",
            "90:00",
            "04:00:00",
            "100:00:00",
            "1-12",
            "1-12:30",
            "7-00:00:00",
            "0:30",
        ] {
            assert!(check_time(good).is_ok(), "{good} should be accepted");
        }
        for bad in [
            "",
            "4h",
            "04:00:00:00",
            "04:60:00",
            "04:00:75",
            "1-24",
            "1-",
            "-1",
            "1-2-3",
            "04::00",
            " 04:00:00",
            "04:00:00\n",
            "0",
            "00:00:00",
            "+5",
        ] {
            let a = SlurmArgs {
                slurm_time: bad.into(),
                ..SlurmArgs::default()
            };
            let e = err(&a);
            assert!(e.starts_with("--slurm-time: "), "{bad:?}: {e}");
        }
    }

    #[test]
    fn bad_partition_and_mem_name_their_flags() {
        for p in ["", "a b", "gpu\n#SBATCH --x", "a,,b", "q;rm"] {
            let e = err(&SlurmArgs {
                partition: Some(p.into()),
                ..SlurmArgs::default()
            });
            assert!(e.starts_with("--partition: "), "{p:?}: {e}");
        }
        for m in ["", "G", "8GB", "8 G", "-1G", "0", "8G\n"] {
            let e = err(&SlurmArgs {
                mem: Some(m.into()),
                ..SlurmArgs::default()
            });
            assert!(e.starts_with("--mem: "), "{m:?}: {e}");
        }
        for m in ["8G", "512M", "1024", "2T", "64k"] {
            assert!(check_mem(m).is_ok(), "{m}");
        }
    }

    #[test]
    fn paths_with_line_breaks_are_refused() {
        let bin = sbatch_script(
            &SlurmArgs::default(),
            Path::new("/opt/spr\nout"),
            Path::new("/m.jsonl"),
            1,
            Path::new("/logs"),
            false,
        );
        assert!(format!("{:#}", bin.unwrap_err()).contains("line break"));
        let manifest = sbatch_script(
            &SlurmArgs::default(),
            Path::new("/opt/sprout"),
            Path::new("/m\n.jsonl"),
            1,
            Path::new("/logs"),
            false,
        );
        let e = format!("{:#}", manifest.unwrap_err());
        assert!(
            e.starts_with("the path of the manifest holds a line break"),
            "{e}"
        );
        for log in ["/lo\ngs", "/lo\"gs", "/logs%j", "/lo\\gs"] {
            let e = sbatch_script(
                &SlurmArgs::default(),
                Path::new("/opt/sprout"),
                Path::new("/m.jsonl"),
                1,
                Path::new(log),
                false,
            )
            .unwrap_err();
            assert!(
                format!("{e:#}").starts_with("--slurm-log-dir: "),
                "{log:?}: {e:#}"
            );
        }
    }

    #[test]
    fn writes_an_executable_script_and_the_log_dir() {
        let dir = std::env::temp_dir().join(format!("sprout-slurm-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file = dir.join("sweep.sbatch");
        let logs = dir.join("slurm-logs");
        write_sbatch_script(
            &SlurmArgs::default(),
            Path::new("/opt/sprout"),
            &dir.join("manifest.jsonl"),
            3,
            &logs,
            false,
            &file,
        )
        .unwrap();
        assert!(logs.is_dir());
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("#!/bin/bash\n") && text.contains("--array=0-2\n"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o111, 0o111);
        }
        // An invalid request writes nothing.
        let none = dir.join("none.sbatch");
        assert!(write_sbatch_script(
            &SlurmArgs::default(),
            Path::new("/opt/sprout"),
            &dir.join("manifest.jsonl"),
            0,
            &dir.join("other-logs"),
            false,
            &none,
        )
        .is_err());
        assert!(!none.exists() && !dir.join("other-logs").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
