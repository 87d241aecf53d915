//! A sweep run as a Slurm job array on a real one-node cluster
//! (scripts/slurm-cluster.sh) must give the same Pareto table as the same
//! sweep run in one process, also when one of its tasks is requeued while it
//! runs and when a finished task is run again.
//!
//! Needs root, Slurm and munge (Debian: `apt-get install slurm-wlm munge`);
//! without them the test prints why and passes, unless SPROUT_REQUIRE_SLURM=1.

mod common;

use common::{ok, sprout, tmp};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the whole array may take on the test cluster.
const ARRAY_TIMEOUT: Duration = Duration::from_secs(600);

/// One test cluster at a time: each claims all of the machine's CPUs.
static ONE_CLUSTER: Mutex<()> = Mutex::new(());

/// What the machine lacks for a test, if anything (`pareto`: the test
/// needs `sprout pareto`).
fn missing(pareto: bool) -> Option<String> {
    let uid = Command::new("id").arg("-u").output();
    let root = matches!(&uid, Ok(o) if String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        return Some("not running as root (slurmd must start jobs)".into());
    }
    let absent: Vec<&str> = [
        "sbatch",
        "squeue",
        "scontrol",
        "sinfo",
        "scancel",
        "slurmctld",
        "slurmd",
        "munged",
        "mungekey",
        "ss",
    ]
    .into_iter()
    .filter(|b| find_program(b).is_none())
    .collect();
    if !absent.is_empty() {
        return Some(format!(
            "{} not installed (apt-get install slurm-wlm munge)",
            absent.join(", ")
        ));
    }
    let help = || sprout().args(["pareto", "--help"]).output();
    if pareto && !matches!(help(), Ok(o) if o.status.success()) {
        return Some("this sprout has no pareto command".into());
    }
    None
}

/// `name` on PATH or in the system binary directories.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// True when the test should run; prints one line and returns false when it
/// should be skipped; panics when it may not be skipped.
fn slurm_available(pareto: bool) -> bool {
    match missing(pareto) {
        None => true,
        Some(why) if std::env::var("SPROUT_REQUIRE_SLURM").as_deref() == Ok("1") => {
            panic!("SPROUT_REQUIRE_SLURM=1 but {why}")
        }
        Some(why) => {
            println!("skipping the Slurm test: {why}");
            false
        }
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/slurm-cluster.sh")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A running test cluster; stopped when dropped, also when the test fails.
struct Cluster {
    dir: PathBuf,
    conf: String,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let t = Instant::now();
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir)
            .output()
            .expect("running scripts/slurm-cluster.sh");
        // From here on the guard stops whatever part of it did start.
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            conf: String::new(),
        };
        assert!(
            out.status.success(),
            "slurm-cluster.sh start failed:\n{}",
            text(&out)
        );
        let env = std::fs::read_to_string(dir.join("env")).expect("reading the cluster's env file");
        cluster.conf = env
            .lines()
            .find_map(|l| l.strip_prefix("export SLURM_CONF="))
            .expect("SLURM_CONF in the cluster's env file")
            .trim()
            .to_string();
        println!(
            "slurm cluster up in {:.1} s:\n{}",
            t.elapsed().as_secs_f64(),
            text(&out).trim_end()
        );
        cluster
    }

    /// A Slurm client command talking to this cluster.
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(find_program(program).unwrap_or_else(|| program.into()));
        c.env("SLURM_CONF", &self.conf);
        c
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        self.cmd(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"))
    }

    /// Submits an sbatch script from `cwd`; the job id.
    fn submit(&self, script: &Path, cwd: &Path) -> String {
        let out = self
            .cmd("sbatch")
            .arg("--parsable")
            .arg(script)
            .current_dir(cwd)
            .output()
            .expect("running sbatch");
        assert!(out.status.success(), "sbatch failed:\n{}", text(&out));
        let id = String::from_utf8_lossy(&out.stdout);
        id.trim().split(';').next().unwrap().to_string()
    }

    /// `(task id, state)` of the job's unfinished tasks, one per task.
    fn tasks(&self, job: &str) -> Option<Vec<(String, String)>> {
        let out = self.run("squeue", &["-h", "-r", "-j", job, "-o", "%i %T"]);
        if !out.status.success() {
            // A job the controller has forgotten is finished too.
            return text(&out).contains("Invalid job id").then(Vec::new);
        }
        Some(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_once(' '))
                .map(|(i, s)| (i.to_string(), s.trim().to_string()))
                .collect(),
        )
    }

    /// Waits until no task of `job` is pending, running or completing.
    fn wait(&self, job: &str, started: Instant) {
        loop {
            match self.tasks(job) {
                Some(t) if t.is_empty() => return,
                _ => {}
            }
            assert!(
                started.elapsed() < ARRAY_TIMEOUT,
                "job {job} not done after {:?}; squeue:\n{}",
                ARRAY_TIMEOUT,
                text(&self.run("squeue", &["-r"]))
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `scontrol show job` of one task as key=value pairs.
    fn job_field(&self, task: &str, key: &str) -> Option<String> {
        let out = self.run("scontrol", &["-o", "show", "job", task]);
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
    }

    /// Requeues `task` and lets it start again at once rather than after
    /// the controller's requeue delay. True when Slurm took the requeue.
    fn requeue(&self, task: &str) -> bool {
        let out = self.run("scontrol", &["requeue", task]);
        if !out.status.success() {
            println!("requeue of {task} refused: {}", text(&out).trim());
            return false;
        }
        // Once it is pending its first attempt has been killed.
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            if self.job_field(task, "JobState").as_deref() == Some("PENDING") {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.run(
            "scontrol",
            &["update", &format!("JobId={task}"), "StartTime=now"],
        );
        true
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        match Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.dir)
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("slurm-cluster.sh stop failed:\n{}", text(&out)),
            Err(e) => eprintln!("slurm-cluster.sh stop: {e}"),
        }
    }
}

/// A minimal CSV reader: fields split at commas outside double quotes.
fn csv_rows(s: &str) -> Vec<Vec<String>> {
    s.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut fields = vec![String::new()];
            let mut quoted = false;
            for c in line.chars() {
                match c {
                    '"' => {
                        quoted = !quoted;
                        fields.last_mut().unwrap().push(c);
                    }
                    ',' if !quoted => fields.push(String::new()),
                    _ => fields.last_mut().unwrap().push(c),
                }
            }
            fields
        })
        .collect()
}

/// The Pareto table without its wall-time columns (headers ending in
/// `seconds`), with the sweep's own directory written as `<out>`.
fn comparable(csv: &Path, out: &Path) -> Vec<Vec<String>> {
    let s = std::fs::read_to_string(csv).unwrap_or_else(|e| panic!("{}: {e}", csv.display()));
    let s = s.replace(out.to_str().unwrap(), "<out>");
    let rows = csv_rows(&s);
    assert!(!rows.is_empty(), "{} is empty", csv.display());
    let keep: Vec<bool> = rows[0]
        .iter()
        .map(|h| !h.trim().trim_matches('"').trim().ends_with("seconds"))
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(keep.iter().chain(std::iter::repeat(&true)))
                .filter(|(_, k)| **k)
                .map(|(f, _)| f.clone())
                .collect()
        })
        .collect()
}

/// Ids of the manifest's lines, in order, after checking their indices.
fn manifest_ids(manifest: &Path) -> Vec<String> {
    let s =
        std::fs::read_to_string(manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("manifest line {i}: {e}: {l}"));
            assert_eq!(
                v["index"].as_u64(),
                Some(i as u64),
                "manifest line {i}: {l}"
            );
            v["id"]
                .as_str()
                .unwrap_or_else(|| panic!("manifest line {i} has no id: {l}"))
                .to_string()
        })
        .collect()
}

#[test]
fn sweep_as_a_job_array_matches_one_process() {
    if !slurm_available(true) {
        return;
    }
    let _one_cluster = ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let root = tmp("slurm", "sweep");
    std::fs::create_dir_all(&root).unwrap();
    let cluster = Cluster::start(&root.join("cluster"));
    let a = root.join("a");
    let b = root.join("b");
    // A run ends with the same weights only on the same thread count: each
    // task gets as many CPUs (run-job --threads), the one process as many
    // threads.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2)
        .to_string();

    // Plan and write the job array's script.
    let sbatch = a.join("sweep.sbatch");
    let planned = ok(sprout()
        .current_dir(&root)
        .args(["pareto", "--out"])
        .arg(&a)
        .arg("--tiny")
        .arg("--emit-slurm")
        .arg(&sbatch)
        .args(["--cpus-per-task", &threads])
        .output()
        .unwrap());
    let ids = manifest_ids(&a.join("manifest.jsonl"));
    let runs = ids.len();
    assert!(
        runs > 1,
        "the tiny sweep should plan several runs:\n{planned}"
    );
    assert!(
        planned.contains(&format!("planned {runs} runs")),
        "no 'planned {runs} runs' line in:\n{planned}"
    );
    let body = std::fs::read_to_string(&sbatch).unwrap();
    assert!(
        body.contains(&format!("#SBATCH --array=0-{}\n", runs - 1)),
        "{body}"
    );
    let log_dir = a.join("slurm-logs");
    assert!(
        log_dir.is_dir(),
        "--emit-slurm should create {}",
        log_dir.display()
    );

    // Submit; requeue the first task seen running, while it runs.
    let started = Instant::now();
    let job = cluster.submit(&sbatch, &root);
    let mut requeued = None;
    while requeued.is_none() && started.elapsed() < ARRAY_TIMEOUT {
        match cluster.tasks(&job) {
            Some(t) if t.is_empty() => break,
            Some(t) => {
                if let Some((task, _)) = t.iter().find(|(_, s)| s == "RUNNING") {
                    // Let it get some way into its run first.
                    std::thread::sleep(Duration::from_millis(500));
                    // If it has finished meanwhile, wait for the next one.
                    let running = cluster.job_field(task, "JobState").as_deref() == Some("RUNNING");
                    if running && cluster.requeue(task) {
                        requeued = Some(task.clone());
                    }
                }
            }
            None => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.wait(&job, started);
    println!(
        "job array {job} ({runs} tasks) done in {:.1} s; requeued while running: {}",
        started.elapsed().as_secs_f64(),
        requeued.as_deref().unwrap_or("none (no task seen running)")
    );

    // Every task completed, once or after its requeue, and logged.
    for i in 0..runs {
        let task = format!("{job}_{i}");
        let state = cluster.job_field(&task, "JobState");
        let exit = cluster.job_field(&task, "ExitCode");
        let log = log_dir.join(format!("{job}_{i}.out"));
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            log.is_file(),
            "no per-task log {} (files: {:?})",
            log.display(),
            std::fs::read_dir(&log_dir)
                .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
        );
        assert_eq!(
            (state.as_deref(), exit.as_deref()),
            (Some("COMPLETED"), Some("0:0")),
            "task {task}; its log:\n{log_text}"
        );
        let done = a.join("runs").join(&ids[i]).join("done.json");
        assert!(done.is_file(), "no {} after task {task}", done.display());
    }
    if let Some(task) = &requeued {
        assert_eq!(cluster.job_field(task, "Restarts").as_deref(), Some("1"));
        let log = std::fs::read_to_string(log_dir.join(format!("{task}.out"))).unwrap();
        if !log.contains("DUE TO JOB REQUEUE") {
            // It finished between the last look and the requeue, so it ran
            // twice to completion instead.
            println!("task {task} finished before its requeue took effect");
        }
    }

    // A finished task run again finds its completion marker and exits at once.
    let first = format!("{job}_0");
    let marker = a.join("runs").join(&ids[0]).join("done.json");
    let before = std::fs::read(&marker).unwrap();
    let again = Instant::now();
    if cluster.requeue(&first) {
        cluster.wait(&job, again);
        assert_eq!(
            cluster.job_field(&first, "JobState").as_deref(),
            Some("COMPLETED")
        );
        assert_eq!(
            std::fs::read(&marker).unwrap(),
            before,
            "the marker was rewritten"
        );
    }

    ok(sprout()
        .current_dir(&root)
        .args(["pareto", "--out"])
        .arg(&a)
        .args(["--tiny", "--collect"])
        .output()
        .unwrap());

    // The same sweep in one process.
    ok(sprout()
        .current_dir(&root)
        .args(["pareto", "--out"])
        .arg(&b)
        .arg("--tiny")
        .args(["--threads-per-run", &threads])
        .output()
        .unwrap());

    for f in ["pareto.csv", "pareto.md", "pareto.svg"] {
        assert!(a.join(f).is_file(), "no {f} after --collect");
    }
    let (ta, tb) = (
        comparable(&a.join("pareto.csv"), &a),
        comparable(&b.join("pareto.csv"), &b),
    );
    assert_eq!(ta.len(), tb.len(), "row counts differ");
    for (ra, rb) in ta.iter().zip(&tb) {
        assert_eq!(ra, rb, "the job array's table differs from one process's");
    }
    drop(cluster);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn csv_comparison_drops_wall_time_columns() {
    let dir = tmp("slurm", "csv");
    std::fs::create_dir_all(&dir).unwrap();
    let a = dir.join("a.csv");
    let b = dir.join("b.csv");
    std::fs::write(
        &a,
        format!(
            "id,params,\"widths\",train_seconds,accuracy,dir\nr0,100,\"8,16\",3.2,0.81,{}/runs/r0\n",
            dir.display()
        ),
    )
    .unwrap();
    std::fs::write(
        &b,
        "id,params,\"widths\",train_seconds,accuracy,dir\nr0,100,\"8,16\",9.9,0.81,/elsewhere/runs/r0\n",
    )
    .unwrap();
    let ta = comparable(&a, &dir);
    let tb = comparable(&b, Path::new("/elsewhere"));
    assert_eq!(ta, tb);
    assert_eq!(ta[0], ["id", "params", "\"widths\"", "accuracy", "dir"]);
    assert_eq!(ta[1][2], "\"8,16\"");
    std::fs::write(&b, "id,params,\"widths\",train_seconds,accuracy,dir\nr0,100,\"8,16\",9.9,0.82,/elsewhere/runs/r0\n").unwrap();
    assert_ne!(ta, comparable(&b, Path::new("/elsewhere")));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The emitted script itself on the cluster, with a stand-in for sprout that
/// records its arguments, takes a few seconds and leaves a marker, as
/// run-job does: every task runs its line with the task's CPUs as threads in
/// the planning directory, a task requeued while running starts again in
/// the same log, and a finished one run again finds its marker.
#[test]
fn emitted_script_runs_every_line_and_survives_a_requeue() {
    if !slurm_available(false) {
        return;
    }
    let _one_cluster = ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let root = tmp("slurm", "script");
    let work = root.join("it's a sweep");
    std::fs::create_dir_all(&work).unwrap();
    let cluster = Cluster::start(&root.join("cluster"));

    let bin = work.join("fake sprout");
    std::fs::write(
        &bin,
        r#"#!/bin/bash
set -eu
[ "$1" = run-job ] && [ "$2" = --manifest ] && [ "$4" = --index ] && [ "$6" = --threads ]
marker="$(dirname "$3")/done-$5"
echo "args: $* | cwd: $PWD | restarts: ${SLURM_RESTART_COUNT:-0}"
if [ -e "$marker" ]; then echo "already done"; exit 0; fi
sleep 4
touch "$marker"
echo "finished"
"#,
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let manifest = work.join("manifest.jsonl");
    std::fs::write(&manifest, "{}\n{}\n{}\n").unwrap();
    let logs = work.join("slurm-logs");
    let script = work.join("sweep.sbatch");
    let args = sprout::slurm::SlurmArgs {
        cpus_per_task: 1,
        slurm_time: "00:10:00".into(),
        max_parallel: Some(2),
        ..Default::default()
    };
    sprout::slurm::write_sbatch_script(&args, &bin, &manifest, 3, &logs, false, &script).unwrap();

    let started = Instant::now();
    let job = cluster.submit(&script, &root);
    let first = format!("{job}_0");
    while cluster.job_field(&first, "JobState").as_deref() != Some("RUNNING") {
        assert!(started.elapsed() < ARRAY_TIMEOUT, "task {first} never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(cluster.requeue(&first), "requeue of {first} while it runs");
    cluster.wait(&job, started);

    for i in 0..3 {
        let task = format!("{job}_{i}");
        let log = std::fs::read_to_string(logs.join(format!("{task}.out"))).unwrap();
        assert_eq!(
            cluster.job_field(&task, "JobState").as_deref(),
            Some("COMPLETED"),
            "{task}:\n{log}"
        );
        let expected = format!(
            "args: run-job --manifest {} --index {i} --threads 1 | cwd: {} |",
            manifest.display(),
            std::env::current_dir().unwrap().display()
        );
        assert!(
            log.contains(&expected),
            "{task}: expected {expected:?} in\n{log}"
        );
        assert!(work.join(format!("done-{i}")).is_file());
        let attempts = log.matches("args: ").count();
        if i == 0 {
            assert!(log.contains("DUE TO JOB REQUEUE"), "{log}");
            assert_eq!(attempts, 2, "{log}");
            assert!(
                log.contains("restarts: 1") && log.ends_with("finished\n"),
                "{log}"
            );
        } else {
            assert_eq!(attempts, 1, "{log}");
        }
    }

    // Run again, the finished line exits at once.
    let again = Instant::now();
    assert!(cluster.requeue(&first));
    cluster.wait(&job, again);
    let log = std::fs::read_to_string(logs.join(format!("{first}.out"))).unwrap();
    assert!(log.ends_with("already done\n"), "{log}");
    drop(cluster);
    let _ = std::fs::remove_dir_all(&root);
}
