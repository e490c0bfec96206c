//! Where and with what a run trained: `meta.json` (host, CPU, threads, versions, the
//! commit of the binary and of the checkout, one entry per session) and UTC timestamps.

use std::path::Path;
use std::time::SystemTime;

use anyhow::Result;

use crate::files::write_atomic;
use crate::run_spec::RunSpec;

/// UTC time as RFC 3339 (ISO 8601), to the second.
pub fn utc_now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Threads candle's CPU kernels use.
pub fn threads() -> usize {
    // The pool this runs in: a sweep job's own (`sweep_jobs`), else the global one, which
    // RAYON_NUM_THREADS sizes.
    rayon::current_num_threads()
}

/// "Intel(R) Xeon(R) Processor, 2 logical CPUs" from /proc/cpuinfo (Linux), for reports.
pub fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))?
        .split_once(':')?
        .1
        .trim()
        .to_string();
    let logical = info.lines().filter(|l| l.starts_with("processor")).count();
    Some(format!("{model}, {logical} logical CPUs"))
}

/// The instruction set that runs a run's products, as `bench train` names it (`avx2`,
/// `amx-bf16`, ...).
pub(crate) fn isa_label(spec: &RunSpec) -> &'static str {
    cardinal_kernels::isa::selected()
        .label(spec.train.precision == cardinal_zoo::Precision::Bf16Mixed)
}

pub(crate) fn write_meta(
    dir: &Path,
    spec: &RunSpec,
    started: &str,
    ended: Option<&str>,
) -> Result<()> {
    let path = dir.join("meta.json");
    let mut meta: serde_json::Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| serde_json::json!({ "sessions": [] }));
    let commit = git(&["rev-parse", "HEAD"]);
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    meta["run_id"] = spec.run_id().into();
    meta["experiment"] = spec.experiment.clone().into();
    meta["cardinal_version"] = env!("CARGO_PKG_VERSION").into();
    meta["candle_version"] = env!("CARDINAL_CANDLE").into();
    meta["host"] = host.into();
    meta["threads"] = threads().into();
    meta["precision"] = spec.train.precision.to_string().into();
    meta["isa"] = isa_label(spec).into();
    if let Some(cpu) = cpu_model() {
        meta["cpu"] = cpu.into();
    }
    let sessions = meta["sessions"].as_array_mut().expect("sessions is a list");
    match sessions.last_mut() {
        Some(last) if last["start"] == started => {
            last["end"] = ended.into();
        }
        _ => sessions.push(serde_json::json!({
            "start": started,
            "end": ended,
            "git_commit": commit,
            "git_dirty": dirty,
            "build_commit": env!("CARDINAL_BUILD_COMMIT"),
        })),
    }
    write_atomic(&path, serde_json::to_string_pretty(&meta)?.as_bytes())
}
