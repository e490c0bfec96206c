//! `cardinal ablate --launcher slurm`: the job scripts it writes and how it submits them,
//! against a stand-in `sbatch` that records its arguments.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use assert_cmd::Command;

fn experiment() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/cardinality.yaml")
}

fn ablate(runs: &Path, path_env: &str, extra: &[&str]) -> std::process::Output {
    Command::cargo_bin("cardinal")
        .unwrap()
        .env("PATH", path_env)
        .arg("ablate")
        .arg(experiment())
        .arg("--runs-dir")
        .arg(runs)
        .args(["--launcher", "slurm", "--preset", "quick"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn writes_one_array_task_per_cell_with_the_sweep_s_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ablate(
        tmp.path(),
        "/usr/bin:/bin",
        &[
            "--max-parallel",
            "2",
            "--time",
            "00:30:00",
            "--partition",
            "cpu",
            "seeds=[0,1]",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tmp.path().join("cardinality/slurm");
    let array = std::fs::read_to_string(dir.join("array.sbatch")).unwrap();
    // 5 cardinalities x 2 seeds = 10 cells, 2 at a time.
    assert!(array.contains("#SBATCH --array=0-9%2\n"), "{array}");
    assert!(array.contains("#SBATCH --time=00:30:00\n"));
    assert!(array.contains("#SBATCH --partition=cpu\n"));
    assert!(array.contains("#SBATCH --cpus-per-task=2\n"));
    assert!(array.contains("--preset quick 'seeds=[0,1]' --cell \"$SLURM_ARRAY_TASK_ID\""));
    assert!(array.contains("export RAYON_NUM_THREADS="));
    let report = std::fs::read_to_string(dir.join("report.sbatch")).unwrap();
    assert!(report.contains(" report "), "{report}");
    assert!(
        report.contains("--preset quick 'seeds=[0,1]'\n"),
        "{report}"
    );
    assert!(report.contains("--reports-dir /"), "{report}");
    assert!(!report.contains("--array"));
}

#[test]
fn submits_the_array_then_the_report_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let calls = tmp.path().join("calls.txt");
    // A stand-in sbatch: logs its arguments, prints job ids 4242 then 4243.
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> {calls}\nn=$(wc -l < {calls})\necho \"$((4241 + n));cluster\"\n",
        calls = calls.display()
    );
    let sbatch = bin.join("sbatch");
    std::fs::write(&sbatch, script).unwrap();
    std::fs::set_permissions(&sbatch, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path_env = format!("{}:/usr/bin:/bin", bin.display());
    let out = ablate(&tmp.path().join("runs"), &path_env, &["--submit"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("array job 4242: 5 cells"), "{stdout}");
    assert!(
        stdout.contains("report job 4243 (after every task of job 4242 ends)"),
        "{stdout}"
    );
    let calls = std::fs::read_to_string(&calls).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(lines.len(), 2, "{calls}");
    assert!(lines[0].starts_with("--parsable ") && lines[0].ends_with("array.sbatch"));
    assert!(
        lines[1].contains("--dependency=afterany:4242 ") && lines[1].ends_with("report.sbatch")
    );
}

#[test]
fn without_sbatch_submit_fails_clearly_and_the_scripts_are_still_written() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = ablate(tmp.path(), empty.to_str().unwrap(), &["--submit"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sbatch is not on PATH"), "{stderr}");
    assert!(tmp.path().join("cardinality/slurm/array.sbatch").is_file());
    assert!(tmp.path().join("cardinality/slurm/report.sbatch").is_file());

    let out = ablate(tmp.path(), empty.to_str().unwrap(), &["--cell", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--launcher slurm submits them all"));
}
