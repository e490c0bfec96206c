//! Which instruction set the kernels run on: detected once, optionally forced.
//!
//! The kernels have one path per instruction set, chosen at run time so that one binary
//! runs on any x86-64 (and, through the portable path, anywhere):
//!
//! | path | f32 products | bf16 products |
//! |---|---|---|
//! | `amx` | AVX-512 | AMX tiles (`TDPBF16PS`) |
//! | `avx512-bf16` | AVX-512 | `VDPBF16PS` |
//! | `avx512` | AVX-512 | f32 FMAs on bf16-rounded values |
//! | `avx2` | AVX2 + FMA | f32 FMAs on bf16-rounded values |
//! | `portable` | plain Rust | plain Rust on bf16-rounded values |
//!
//! `CARDINAL_ISA=amx|avx512-bf16|avx512|avx2|portable` forces a path, so that tests and
//! benchmarks can run every path a machine has; a path the machine lacks falls back to the
//! best one below it, and says so once on stderr. AMX also needs the kernel's permission to
//! use the tile data registers (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`);
//! where it is refused the kernels fall back to `avx512-bf16` and say so once.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// An instruction-set path, ordered from the most portable to the fastest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    Portable,
    Avx2,
    Avx512,
    Avx512Bf16,
    Amx,
}

impl Isa {
    pub const ALL: [Isa; 5] = [
        Isa::Portable,
        Isa::Avx2,
        Isa::Avx512,
        Isa::Avx512Bf16,
        Isa::Amx,
    ];

    /// The name `CARDINAL_ISA` takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512-bf16",
            Isa::Amx => "amx",
        }
    }

    pub fn parse(text: &str) -> Option<Isa> {
        let text = text.trim().to_ascii_lowercase();
        Isa::ALL
            .into_iter()
            .find(|isa| isa.name() == text || (text == "amx-bf16" && *isa == Isa::Amx))
    }

    /// Whether this machine (and its kernel, for AMX) can run the path.
    pub fn available(self) -> bool {
        detected() >= self
    }

    /// The path f32 (and f64) products take on this choice: the bf16 paths run f32 on
    /// AVX-512.
    pub fn for_f32(self) -> Isa {
        self.min(Isa::Avx512)
    }

    /// The instruction set that actually multiplies for a precision, as run metadata and
    /// benchmark JSON name it (`amx-bf16`, `avx512-bf16`, `avx512`, `avx2`, `portable`).
    pub fn label(self, bf16: bool) -> &'static str {
        match (bf16, self) {
            (true, Isa::Amx) => "amx-bf16",
            (true, Isa::Avx512Bf16) => "avx512-bf16",
            (_, isa) => isa.for_f32().name(),
        }
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The best path this machine can run (detected once).
pub fn detected() -> Isa {
    static DETECTED: OnceLock<Isa> = OnceLock::new();
    *DETECTED.get_or_init(detect)
}

/// Every path this machine can run, most portable first.
pub fn available() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|isa| isa.available()).collect()
}

/// No override set through `set_override`.
const NO_OVERRIDE: u8 = u8::MAX;
static OVERRIDE: AtomicU8 = AtomicU8::new(NO_OVERRIDE);

/// Forces a path for the rest of the process (None: back to the environment's choice).
/// For tests and benchmarks that compare paths in one process; a path the machine lacks
/// falls back as `CARDINAL_ISA` does.
pub fn set_override(isa: Option<Isa>) {
    let code = isa.map_or(NO_OVERRIDE, |isa| isa as u8);
    OVERRIDE.store(code, Ordering::Relaxed);
}

/// The path the kernels take now: an override, else `CARDINAL_ISA`, else the best detected,
/// never more than the machine has.
pub fn selected() -> Isa {
    let code = OVERRIDE.load(Ordering::Relaxed);
    if code != NO_OVERRIDE {
        let wanted = Isa::ALL[code as usize];
        return wanted.min(detected());
    }
    from_environment()
}

fn from_environment() -> Isa {
    static CHOSEN: OnceLock<Isa> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let best = detected();
        let Ok(text) = std::env::var("CARDINAL_ISA") else {
            return best;
        };
        match Isa::parse(&text) {
            Some(wanted) if wanted <= best => wanted,
            Some(wanted) => {
                eprintln!(
                    "cardinal: CARDINAL_ISA={text}: this machine cannot run `{wanted}`; using `{best}`"
                );
                best
            }
            None => {
                let names: Vec<_> = Isa::ALL.iter().map(|i| i.name()).collect();
                eprintln!(
                    "cardinal: CARDINAL_ISA={text} is not one of {}; using `{best}`",
                    names.join(", ")
                );
                best
            }
        }
    })
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            return Isa::Portable;
        }
        let has_avx512 = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512dq");
        if !has_avx512 {
            return Isa::Avx2;
        }
        if !std::arch::is_x86_feature_detected!("avx512bf16") {
            return Isa::Avx512;
        }
        if !cpu_has_amx_bf16() {
            return Isa::Avx512Bf16;
        }
        match request_amx_permission() {
            Ok(()) => Isa::Amx,
            Err(why) => {
                eprintln!("cardinal: the CPU has AMX but {why}; bf16 products use avx512-bf16");
                Isa::Avx512Bf16
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Isa::Portable
    }
}

/// CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
#[cfg(target_arch = "x86_64")]
fn cpu_has_amx_bf16() -> bool {
    let leaf = std::arch::x86_64::__cpuid_count(7, 0);
    leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0
}

/// Asks Linux for the AMX tile data state (it is off for a process until requested).
#[cfg(target_arch = "x86_64")]
fn request_amx_permission() -> Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM takes a feature number by value and
        // only changes this process's permitted extended states.
        let status = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        if status == 0 {
            Ok(())
        } else {
            Err(format!(
                "the kernel refused its tile registers (arch_prctl: {})",
                std::io::Error::last_os_error()
            ))
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err("AMX is only requested on Linux".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_order_by_capability() {
        for isa in Isa::ALL {
            assert_eq!(Isa::parse(isa.name()), Some(isa));
        }
        assert_eq!(Isa::parse("AMX-BF16"), Some(Isa::Amx));
        assert_eq!(Isa::parse("sse"), None);
        assert!(Isa::Portable < Isa::Avx2 && Isa::Avx512Bf16 < Isa::Amx);
        assert_eq!(Isa::Amx.for_f32(), Isa::Avx512);
        assert_eq!(Isa::Avx2.for_f32(), Isa::Avx2);
        assert_eq!(Isa::Amx.label(true), "amx-bf16");
        assert_eq!(Isa::Amx.label(false), "avx512");
        assert_eq!(Isa::Avx2.label(true), "avx2");
    }

    #[test]
    fn the_portable_path_is_always_available_and_overrides_cap_at_the_machine() {
        assert!(available().contains(&Isa::Portable));
        assert!(available().contains(&detected()));
        // Whatever is asked, never more than the machine has.
        assert!(Isa::Amx.min(detected()) <= detected());
    }
}
