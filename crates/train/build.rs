//! Stamps what the binary is built from into it, for each run's meta.json: the commit of the
//! source tree (and whether it had uncommitted changes), and candle's version as resolved
//! in Cargo.lock, marked when the workspace patches it from vendor/.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    // Read when the script runs, not when it was compiled: a target directory shared
    // between checkouts reuses the compiled script with another checkout's path.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest_dir).join("../..");
    // Rebuilt when the checked-out commit or the index moves, so the stamp follows commits.
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let git_dir = Path::new(&git_dir);
        println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
        println!("cargo:rerun-if-changed={}", git_dir.join("index").display());
        if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!(
                "cargo:rerun-if-changed={}",
                git_dir.join(head_ref).display()
            );
        }
    }
    let commit = match git(&["rev-parse", "HEAD"]) {
        Some(commit) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{commit}-dirty")
            } else {
                commit
            }
        }
        None => "unknown".into(),
    };
    println!("cargo:rustc-env=CARDINAL_BUILD_COMMIT={commit}");

    let lock = root.join("Cargo.lock");
    let manifest = root.join("Cargo.toml");
    println!("cargo:rerun-if-changed={}", lock.display());
    println!("cargo:rerun-if-changed={}", manifest.display());
    let lock = std::fs::read_to_string(&lock).unwrap_or_default();
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"candle-core\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown".into());
    let patched = std::fs::read_to_string(&manifest).is_ok_and(|m| {
        m.split("[patch.crates-io]")
            .nth(1)
            .is_some_and(|patch| patch.contains("candle-core") && patch.contains("vendor/"))
    });
    let candle = if patched {
        format!("{version} + vendored patch (vendor/candle-core)")
    } else {
        version
    };
    println!("cargo:rustc-env=CARDINAL_CANDLE={candle}");
}
