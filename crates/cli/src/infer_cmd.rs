//! `cardinal infer` and `cardinal export`: a model, trained here or by torchvision, used.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use cardinal_train::Trained;
use cardinal_zoo::ResNet;
use clap::Args;

use crate::model_arg;

#[derive(Args)]
pub struct InferArgs {
    /// The weights: a trained run (its directory under runs/, or its
    /// checkpoint.safetensors), or a safetensors file in torchvision's layout (f32, f16 or
    /// bf16), which needs --model.
    #[arg(long)]
    weights: PathBuf,
    /// Preset name or YAML/JSON spec file, for a plain weights file (a run names its own).
    #[arg(long)]
    model: Option<String>,
    /// safetensors file with a tensor named `input` of shape [N, C, H, W].
    #[arg(long)]
    input: PathBuf,
    /// Where to write the tensor `logits`.
    #[arg(long)]
    output: PathBuf,
    /// Override the number of classes of --model.
    #[arg(long)]
    classes: Option<usize>,
}

#[derive(Args)]
pub struct ExportArgs {
    /// The trained run: its directory under runs/, or its checkpoint.safetensors.
    run: PathBuf,
    /// Where to write the weights (safetensors, torchvision's names and layout, f32).
    #[arg(long)]
    out: PathBuf,
}

pub fn infer(args: InferArgs) -> Result<()> {
    let device = Device::Cpu;
    let net = if Trained::is_run(&args.weights) {
        if args.model.is_some() || args.classes.is_some() {
            bail!(
                "{} is a trained run, which names its own model: leave out --model and --classes",
                args.weights.display()
            );
        }
        let trained = Trained::open(&args.weights)?;
        eprintln!(
            "{}: {} after {} of {} epochs",
            trained.dir.display(),
            trained.run.model,
            trained.epochs_done,
            trained.epochs
        );
        ResNet::new(&trained.run.spec, &trained.state)?
    } else {
        let Some(name) = &args.model else {
            bail!(
                "{} is a weights file: name its model with --model (a preset or spec file), or pass a run directory",
                args.weights.display()
            );
        };
        let mut model = model_arg::resolve(name)?;
        if let Some(classes) = args.classes {
            model.spec.classes = classes;
        }
        let state =
            cardinal_zoo::load_safetensors(&args.weights, &model.spec, &model.name, &device)?;
        ResNet::new(&model.spec, &state)?
    };
    let input_file = args.input.display().to_string();
    let tensors = candle_core::safetensors::load(&args.input, &device)
        .with_context(|| format!("cannot read {input_file}"))?;
    let Some(input) = tensors.get("input") else {
        let mut found: Vec<&String> = tensors.keys().collect();
        found.sort();
        bail!("{input_file}: no tensor named `input` (found: {found:?})");
    };
    let input = input.to_dtype(DType::F32)?;
    let logits = net
        .forward_t(&input, false)
        .with_context(|| format!("{input_file}: tensor `input`"))?;
    let out: HashMap<String, Tensor> = [("logits".to_string(), logits.clone())].into();
    candle_core::safetensors::save(&out, &args.output)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!(
        "wrote logits {:?} for {} images to {}",
        logits.dims(),
        input.dim(0)?,
        args.output.display()
    );
    Ok(())
}

pub fn export(args: ExportArgs) -> Result<()> {
    let trained = Trained::open(&args.run)?;
    trained.export(&args.out)?;
    eprintln!(
        "wrote {} ({} after {} of {} epochs) to {} in torchvision's layout",
        trained.run.model,
        trained.dir.display(),
        trained.epochs_done,
        trained.epochs,
        args.out.display()
    );
    Ok(())
}
