//! The Slurm executor against a real Slurm: a one-node cluster started here
//! (scripts/slurm/local-cluster.sh: munged, slurmctld and slurmd on free
//! ports) runs a recipe's stages as jobs. Two independent stages run at the
//! same time, a failing job is reported with its log, a job cancelled from
//! outside and one cancelled by interrupting the run leave no entry and
//! their stages resume from their checkpoints, and a rerun finds every stage
//! stored. Needs root and Debian's slurm-wlm and munge;
//! without them the test is skipped, except under CI=true, where it fails.

mod common;

use common::{Workspace, free_port, repo_root, text};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const RECIPE: &str = "\
name: cluster
stages:
  left:
    op: count
    with: { steps: 8, step_ms: 250 }
  right:
    op: count
    with: { steps: 9, step_ms: 250 }
  joined:
    op: concat
    inputs: { parts: [left, right] }
  broken:
    op: count
    with: { steps: 4 }
  after_broken:
    op: concat
    inputs: { parts: [broken] }
  without_broken:
    op: gather
    inputs: { parts: [left, broken] }
    with: { separator: \"|\" }
  long:
    op: count
    with: { steps: 400, step_ms: 50 }
  longer:
    op: count
    with: { steps: 401, step_ms: 50 }
";

/// A cluster that stops when dropped.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

fn script() -> PathBuf {
    repo_root().join("scripts/slurm/local-cluster.sh")
}

fn start_cluster() -> Option<Cluster> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| text(&o.stdout).trim() == "0");
    let have = ["slurmctld", "slurmd", "munged"].iter().all(|tool| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !(have && root.unwrap_or(false)) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the Slurm test needs root and slurm-wlm and munge (.ci/run installs them)"
        );
        eprintln!("skipped: the Slurm test needs root and `apt-get install slurm-wlm munge`");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(script())
        .arg("start")
        .arg(dir.path())
        .env("SLURMCTLD_PORT", free_port().to_string())
        .env("SLURMD_PORT", free_port().to_string())
        .output()
        .unwrap();
    let cluster = Cluster { dir };
    assert!(
        out.status.success(),
        "the local cluster did not start: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    Some(cluster)
}

fn run(ws: &Workspace, cluster: &Cluster, args: &[&str]) -> Output {
    ws.cmd(args)
        .env("SLURM_CONF", cluster.conf())
        .output()
        .unwrap()
}

fn report(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", text(&out.stdout), text(&out.stderr)))
}

fn outcome<'a>(report: &'a serde_json::Value, stage: &str) -> &'a serde_json::Value {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == stage)
        .unwrap_or_else(|| panic!("no {stage} in {report}"))
}

/// When the op log says a stage started and finished (line numbers).
fn span(ws: &Workspace, stage: &str) -> (usize, usize) {
    let log = ws.log();
    let at = |word: &str| {
        log.iter()
            .position(|l| l.starts_with(word) && l.split(' ').nth(1) == Some(stage))
            .unwrap_or_else(|| panic!("no `{word} {stage}` in {log:?}"))
    };
    (at("start-at-0"), at("finish"))
}

/// Starts `run --until STAGE` (with `slurm`, the executor's flags) in the
/// background and returns once the stage's job has written a checkpoint:
/// the running engine and the stage's key.
fn run_until_checkpointed(
    ws: &Workspace,
    cluster: &Cluster,
    stage: &str,
    slurm: &[&str],
) -> (std::process::Child, String) {
    let mut args = vec!["run", "recipe.yaml", "--until", stage];
    args.extend(slurm);
    let engine = ws
        .cmd(&args)
        .env("SLURM_CONF", cluster.conf())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let key = ws.key_of("recipe.yaml", stage);
    let checkpoint = ws
        .store()
        .join("scratch")
        .join(&key)
        .join("checkpoint.json");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !checkpoint.exists() {
        assert!(
            Instant::now() < deadline,
            "`{stage}` never checkpointed: {:?}",
            ws.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (engine, key)
}

fn job_id(store: &Path, stage: &str) -> Option<String> {
    let jobs = std::fs::read_dir(store.join("jobs")).ok()?;
    for entry in jobs.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("{stage}-"))
        {
            let record: serde_json::Value =
                serde_json::from_slice(&std::fs::read(entry.path().join("job.json")).ok()?).ok()?;
            return record["job_id"].as_str().map(String::from);
        }
    }
    None
}

#[test]
fn stages_run_as_slurm_jobs_fail_cancel_resume_and_cache() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let ws = Workspace::new();
    ws.write("recipe.yaml", RECIPE);
    let slurm = [
        "--executor",
        "slurm",
        "--poll",
        "0.2",
        "--jobs",
        "4",
        "--json",
    ];

    // Two independent stages in parallel (the node has two CPUs). The
    // executor and a time limit come from the machine's config file.
    let config = ws.write(
        "config.yaml",
        "executor: slurm\nslurm:\n  defaults: { time: \"10:00\" }\n",
    );
    let out = ws
        .cmd(&[
            "run",
            "recipe.yaml",
            "--until",
            "joined",
            "--poll",
            "0.2",
            "--jobs",
            "4",
            "--json",
        ])
        .env("SLURM_CONF", cluster.conf())
        .env("DISTILLERY_CONFIG", &config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let first = report(&out);
    for stage in ["left", "right", "joined"] {
        assert_eq!(outcome(&first, stage)["outcome"], "ran", "{first}");
    }
    let (left_start, left_end) = span(&ws, "left");
    let (right_start, right_end) = span(&ws, "right");
    assert!(
        left_start < right_end && right_start < left_end,
        "left and right did not overlap: {:?}",
        ws.log()
    );
    assert_eq!(ws.output_of("recipe.yaml", "joined").lines().count(), 2);
    let left_key = ws.key_of("recipe.yaml", "left");
    let script = std::fs::read_to_string(
        ws.store()
            .join("jobs")
            .join(format!("left-{}", &left_key[..16]))
            .join("job.sh"),
    )
    .unwrap();
    assert!(script.contains("# sbatch --time=10:00\n"), "{script}");

    // A failing job: reported with its log's tail; what needs it is
    // skipped, and what binds it in a partial slot runs without it, as a
    // job that plans the same key (`run-stage --absent`).
    let mut args = vec![
        "run",
        "recipe.yaml",
        "--until",
        "after_broken",
        "--until",
        "without_broken",
    ];
    args.extend(slurm);
    args.extend(["--set", "stages.broken.with.fail_at=2"]);
    let out = run(&ws, &cluster, &args);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let first = report(&out);
    let broken = outcome(&first, "broken");
    assert_eq!(broken["outcome"], "failed");
    let error = broken["error"].as_str().unwrap();
    assert!(error.contains("slurm job"), "{error}");
    assert!(error.contains("FAILED"), "{error}");
    assert!(
        error.contains("failing at step 2 as asked"),
        "the log tail is missing: {error}"
    );
    assert_eq!(outcome(&first, "after_broken")["outcome"], "skipped");
    let without = outcome(&first, "without_broken");
    assert_eq!(without["outcome"], "ran", "{first}");
    let gathered = std::fs::read_to_string(
        ws.store()
            .join("store")
            .join(without["key"].as_str().unwrap())
            .join("out/out.txt"),
    )
    .unwrap();
    assert!(gathered.ends_with("|<no broken>"), "{gathered}");

    // `status` names the failed stage's job and its log.
    let status = run(
        &ws,
        &cluster,
        &[
            "status",
            "recipe.yaml",
            "--set",
            "stages.broken.with.fail_at=2",
        ],
    );
    let status = text(&status.stdout);
    assert!(status.contains("    slurm job"), "{status}");
    assert!(status.contains("FAILED (log "), "{status}");
    let status = run(
        &ws,
        &cluster,
        &[
            "status",
            "recipe.yaml",
            "--json",
            "--set",
            "stages.broken.with.fail_at=2",
        ],
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let broken = status
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "broken")
        .unwrap();
    assert_eq!(broken["slurm_job"]["state"], "FAILED", "{broken}");
    assert!(broken["slurm_job"]["job_id"].as_str().is_some(), "{broken}");

    // A job cancelled from outside: no entry, a checkpoint, and a rerun
    // that resumes from it.
    let (engine, long_key) = run_until_checkpointed(&ws, &cluster, "long", &slurm);
    let store = ws.store();
    let id = job_id(&store, "long").expect("a job record for `long`");
    let cancelled = Command::new("scancel")
        .arg(&id)
        .env("SLURM_CONF", cluster.conf())
        .status()
        .unwrap();
    assert!(cancelled.success());
    let out = engine.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let long = report(&out);
    let long = outcome(&long, "long");
    assert_eq!(long["outcome"], "failed");
    assert!(
        long["error"].as_str().unwrap().contains("CANCELLED"),
        "{long}"
    );
    assert!(!store.join("store").join(&long_key).exists());

    // Interrupting the run (Ctrl-C) cancels its job.
    let (engine, longer_key) = run_until_checkpointed(&ws, &cluster, "longer", &slurm);
    let interrupted = Command::new("kill")
        .args(["-INT", &engine.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let out = engine.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    let longer = report(&out);
    let longer = outcome(&longer, "longer");
    assert!(
        longer["error"]
            .as_str()
            .unwrap()
            .contains("the run was interrupted"),
        "{longer}"
    );
    let id = job_id(&store, "longer").expect("a job record for `longer`");
    let queue = Command::new("squeue")
        .args(["--noheader", "--jobs", &id])
        .env("SLURM_CONF", cluster.conf())
        .output()
        .unwrap();
    assert_eq!(text(&queue.stdout).trim(), "", "job {id} is still queued");
    assert!(!store.join("store").join(&longer_key).exists());

    // A rerun resumes both from their checkpoints.
    ws.clear_log();
    let mut args = vec!["run", "recipe.yaml"];
    args.extend(slurm);
    let out = run(&ws, &cluster, &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for stage in ["long", "longer"] {
        let resumed = ws
            .log()
            .into_iter()
            .find(|l| l.starts_with("start-at-") && l.split(' ').nth(1) == Some(stage))
            .unwrap_or_else(|| panic!("`{stage}` did not run again"));
        let step: u32 = resumed["start-at-".len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(step > 0, "`{stage}` started over: {resumed}");
    }
    let full = report(&out);
    for stage in ["broken", "after_broken", "without_broken", "long", "longer"] {
        assert_eq!(outcome(&full, stage)["outcome"], "ran", "{full}");
    }

    // Everything is stored: a rerun submits nothing.
    ws.clear_log();
    let out = run(&ws, &cluster, &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for stage in report(&out)["stages"].as_array().unwrap() {
        assert_eq!(stage["outcome"], "cached", "{stage}");
    }
    assert!(ws.log().is_empty());
}

#[test]
fn resources_are_validated_where_written_and_never_change_a_key() {
    let ws = Workspace::new();
    ws.write("plain.yaml", RECIPE);
    let with_resources = RECIPE
        .replace(
            "name: cluster\n",
            "name: cluster\nexecutor: slurm\nslurm:\n  defaults: { cpus: 1, mem: 1G }\n  ops:\n    count: { time: \"10:00\" }\n",
        )
        .replace(
            "    with: { steps: 400, step_ms: 50 }\n",
            "    with: { steps: 400, step_ms: 50 }\n    resources: { cpus: 2, sbatch: [\"--qos=low\"] }\n",
        );
    ws.write("resourced.yaml", &with_resources);
    let keys = |recipe: &str| -> Vec<String> {
        ws.planned(recipe)
            .iter()
            .map(|s| s["key"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(keys("plain.yaml"), keys("resourced.yaml"));

    let bad = RECIPE
        .replace(
            "name: cluster\n",
            "name: cluster\nexecutor: pbs\nslurm:\n  defaults: { mem: lots }\n  ops:\n    cnt: { gpus: 1 }\n",
        )
        .replace(
            "    with: { steps: 400, step_ms: 50 }\n",
            "    with: { steps: 400, step_ms: 50 }\n    resources: { cpu: 2, sbatch: [\"--output=x\"] }\n",
        );
    ws.write("bad.yaml", &bad);
    let out = ws.run(&["validate", "bad.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems: Vec<String> = reports[0]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{} {}:{} {}",
                p["code"], p["line"], p["column"], p["message"]
            )
        })
        .collect();
    let joined = problems.join("\n");
    for expected in [
        "`executor` must be one of `local`, `slurm`",
        "`lots` is not a memory size",
        "`slurm.ops` names `cnt`, which is not an op",
        "unknown field `cpu`",
    ] {
        assert!(
            joined.contains(expected),
            "missing {expected:?} in:\n{joined}"
        );
    }
    // `--output` is the executor's own, but only reported once the field
    // names are right; with `cpus` it is.
    ws.write("bad.yaml", &bad.replace("cpu: 2", "cpus: 2"));
    let out = ws.run(&["validate", "bad.yaml"]);
    assert!(
        text(&out.stderr).contains("`--output` is set by the executor"),
        "{}",
        text(&out.stderr)
    );
}
