//! `cardinal equivalence`: block forms A, B and C checked to be one function.

use anyhow::{bail, Context, Result};
use candle_core::DType;
use cardinal_zoo::equivalence::{self, Check};
use clap::{Args, ValueEnum};

use crate::table::Table;
use crate::{model_arg, print_json, Format};

#[derive(Args)]
pub struct EquivalenceArgs {
    /// Model whose block forms are compared (preset or spec file).
    #[arg(default_value = "resnext50_32x4d")]
    model: String,
    /// Seed of the weights and of the input batch.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Input side; small so that the check takes seconds on a CPU, large enough that
    /// train-mode BN sees several values per channel in the last stage.
    #[arg(long, default_value_t = 48)]
    input_size: usize,
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Precision of the check. Deep nets in train mode amplify f32 rounding through nearly
    /// constant BN channels; f64 tests the functions themselves. Small nets pass in f32.
    #[arg(long, value_enum, default_value_t = Precision::F64)]
    dtype: Precision,
    /// Where the models run: cpu (cardinal's kernels), cuda or cuda:N (candle's ops there;
    /// a build with `--features cuda`). Weights and inputs are drawn on the CPU either way.
    #[arg(long, value_parser = crate::device_arg::parse, default_value = "cpu")]
    device: crate::device_arg::DeviceArg,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Precision {
    F32,
    F64,
}

pub fn run(args: EquivalenceArgs) -> Result<bool> {
    let mut model = model_arg::resolve(&args.model)?;
    model.spec.input_size = args.input_size;
    if args.batch_size < 2 {
        bail!("--batch-size must be at least 2: train-mode BN needs two samples per channel");
    }
    let dtype = match args.dtype {
        Precision::F32 => DType::F32,
        Precision::F64 => DType::F64,
    };
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let started = std::time::Instant::now();
    let device = args.device.open()?;
    let checks: Vec<Check> = equivalence::run_all_on(
        &model.spec,
        args.seed,
        args.batch_size,
        dtype,
        &device,
        &mut |step| spinner.set_message(format!("{}: {step}", model.name)),
    )
    .with_context(|| format!("equivalence checks on {}", model.name))?;
    spinner.finish_and_clear();
    eprintln!("checked in {:.1} s", started.elapsed().as_secs_f64());
    let failed = checks.iter().filter(|c| !c.passed).count();
    match args.format {
        Format::Json => print_json(&checks)?,
        Format::Csv => {
            println!("check,tensor,max_abs_diff,tolerance,passed");
            for c in &checks {
                println!(
                    "\"{}\",{},{:e},{:e},{}",
                    c.check,
                    c.tensor.as_deref().unwrap_or(""),
                    c.max_abs_diff,
                    c.tolerance,
                    c.passed
                );
            }
        }
        Format::Table => {
            println!(
                "Block forms of {} ({}), {:?}, seed {}, batch {} at {}x{}; tolerance {:.0e} of each reference's largest magnitude (per tensor for weight gradients and BN statistics: the row shows the tensor closest to its tolerance)\n",
                model.name,
                model.spec.template(),
                dtype,
                args.seed,
                args.batch_size,
                args.input_size,
                args.input_size,
                equivalence::RELATIVE_TOLERANCE
            );
            let mut t = Table::new(["check", "max |diff|", "tolerance", "result"]);
            for c in &checks {
                let check = match &c.tensor {
                    Some(tensor) => format!("{} [{tensor}]", c.check),
                    None => c.check.clone(),
                };
                t.row([
                    check,
                    format!("{:.2e}", c.max_abs_diff),
                    format!("{:.2e}", c.tolerance),
                    if c.passed {
                        "ok".to_string()
                    } else {
                        "FAILED".to_string()
                    },
                ]);
            }
            print!("{}", t.render());
            if failed == 0 {
                println!(
                    "\nall {} checks agree: the forms compute one function",
                    checks.len()
                );
            } else {
                println!("\n{failed} of {} checks FAILED", checks.len());
            }
        }
    }
    Ok(failed == 0)
}
