//! Where a step's time goes, op by op: with `CARDINAL_PROFILE=1` in the environment, every
//! op of this crate adds its wall time to a table (by op, and for convolutions by shape),
//! which `cardinal bench train` prints after each case. Off (the default), the ops only
//! test one flag.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

static TABLE: Mutex<BTreeMap<String, (Duration, usize)>> = Mutex::new(BTreeMap::new());

/// Whether `CARDINAL_PROFILE` asks for the table (read once).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("CARDINAL_PROFILE").is_some_and(|v| v != "0"))
}

/// Runs `f`, adding its time under the name `name()` (only built when profiling).
#[inline]
pub(crate) fn time<R>(name: impl FnOnce() -> String, f: impl FnOnce() -> R) -> R {
    if !enabled() {
        return f();
    }
    let start = Instant::now();
    let result = f();
    let elapsed = start.elapsed();
    let mut table = TABLE.lock().expect("profile table");
    let entry = table.entry(name()).or_default();
    entry.0 += elapsed;
    entry.1 += 1;
    result
}

/// Adds the time from its creation to its drop under a fixed name (for whole op bodies).
pub(crate) struct Span(Option<(&'static str, Instant)>);

impl Span {
    #[inline]
    pub(crate) fn new(name: &'static str) -> Span {
        Span(enabled().then(|| (name, Instant::now())))
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some((name, start)) = self.0 {
            let mut table = TABLE.lock().expect("profile table");
            let entry = table.entry(name.to_string()).or_default();
            entry.0 += start.elapsed();
            entry.1 += 1;
        }
    }
}

/// The table so far, one line per entry with its share of the total, and resets it.
/// Empty when profiling is off.
pub fn take_report() -> String {
    let mut table = TABLE.lock().expect("profile table");
    let total: Duration = table.values().map(|v| v.0).sum();
    let mut out = String::new();
    for (name, (time, calls)) in table.iter() {
        out.push_str(&format!(
            "{name:44} {:9.1} ms {:6} calls {:5.1}%\n",
            time.as_secs_f64() * 1e3,
            calls,
            100.0 * time.as_secs_f64() / total.as_secs_f64().max(1e-12),
        ));
    }
    table.clear();
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn without_the_variable_nothing_is_recorded() {
        // The test harness does not set CARDINAL_PROFILE.
        if !super::enabled() {
            assert_eq!(super::time(|| "x".into(), || 7), 7);
            assert!(super::take_report().is_empty());
        }
    }
}
