//! `--device cpu|cuda|cuda:N`.

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// A device as the user names it; opened only when a command needs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceArg {
    #[default]
    Cpu,
    Cuda(usize),
}

impl std::fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceArg::Cpu => f.write_str("cpu"),
            DeviceArg::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

pub fn parse(s: &str) -> std::result::Result<DeviceArg, String> {
    match s {
        "cpu" => Ok(DeviceArg::Cpu),
        "cuda" => Ok(DeviceArg::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceArg::Cuda)
            .ok_or_else(|| format!("unknown device `{s}` (expected cpu, cuda or cuda:N)")),
    }
}

impl DeviceArg {
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceArg::Cpu => Ok(Device::Cpu),
            DeviceArg::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    bail!(
                        "this cardinal was built without CUDA: rebuild with `cargo build \
                         --release -p cardinal-cli --features cuda` (needs the CUDA toolkit)"
                    );
                }
                Device::new_cuda(n).with_context(|| format!("cannot open CUDA device {n}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_device_names() {
        assert_eq!(parse("cpu"), Ok(DeviceArg::Cpu));
        assert_eq!(parse("cuda"), Ok(DeviceArg::Cuda(0)));
        assert_eq!(parse("cuda:3"), Ok(DeviceArg::Cuda(3)));
        assert!(parse("gpu")
            .unwrap_err()
            .contains("expected cpu, cuda or cuda:N"));
        assert!(parse("cuda:x").is_err());
        assert_eq!(DeviceArg::Cuda(2).to_string(), "cuda:2");
    }
}
