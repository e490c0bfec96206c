//! Numerical proof that the block forms are one function (paper Fig. 3) and that an
//! aggregated depth-2 block is a wider dense block (Fig. 4).
//!
//! Every check runs real models on a seeded random batch: form A, B and C models built from
//! one set of converted weights must agree on logits (train and eval mode), on the gradient
//! with respect to the input and to every weight, and on the BN running statistics after a
//! train step. Differences are measured against the reference's largest magnitude.

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

use crate::complexity::Complexity;
use crate::convert::convert;
use crate::error::Result;
use crate::init::{init_weights, randomize_batch_norm};
use crate::model::ResNet;
use crate::spec::{BlockForm, BlockKind, NetSpec, StageSpec, Stem};
use crate::StateDict;

/// Allowed difference relative to the reference output's scale.
pub const RELATIVE_TOLERANCE: f64 = 1e-5;

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: String,
    pub max_abs_diff: f64,
    /// The reference's largest magnitude that the tolerance is relative to (0 for exact
    /// quantities such as counts, which must match exactly).
    pub scale: f64,
    pub tolerance: f64,
    pub passed: bool,
    /// For a check over several tensors, each against its own scale: the tensor whose
    /// difference comes closest to (or furthest past) its tolerance, which the other
    /// fields describe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensor: Option<String>,
}

impl Check {
    fn new(check: String, max_abs_diff: f64, scale: f64) -> Check {
        let tolerance = RELATIVE_TOLERANCE * scale;
        Check {
            check,
            max_abs_diff,
            scale,
            tolerance,
            passed: max_abs_diff <= tolerance,
            tensor: None,
        }
    }

    /// One check over several tensors, each against a tolerance relative to its own scale
    /// (a wrong small tensor is not hidden by a large one); it reports the tensor that
    /// comes closest to, or furthest past, its tolerance.
    fn per_tensor(check: String, tensors: &[(String, f64, f64)]) -> Check {
        let ratio = |&(_, diff, scale): &(String, f64, f64)| {
            if diff == 0.0 {
                0.0
            } else if scale == 0.0 {
                f64::INFINITY
            } else {
                diff / (RELATIVE_TOLERANCE * scale)
            }
        };
        let worst = tensors
            .iter()
            .max_by(|a, b| ratio(a).total_cmp(&ratio(b)))
            .cloned()
            .unwrap_or_default();
        Check {
            passed: tensors.iter().all(|t| ratio(t) <= 1.0),
            tensor: Some(worst.0),
            ..Check::new(check, worst.1, worst.2)
        }
    }
}

fn random_tensor(
    rng: &mut ChaCha8Rng,
    shape: &[usize],
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    Ok(Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?)
}

fn max_abs(t: &Tensor) -> Result<f64> {
    Ok(t.abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?)
}

fn cast(state: StateDict, dtype: DType) -> Result<StateDict> {
    state
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(dtype)?)))
        .collect()
}

/// Per tensor of the reference: its name, the largest absolute difference from the
/// matching tensor of `other`, and the reference's largest magnitude. A tensor missing from
/// either side is an error, as is an empty reference (nothing would be compared).
fn compare_states(
    what: &str,
    reference: &StateDict,
    other: &StateDict,
) -> Result<Vec<(String, f64, f64)>> {
    let missing = |reason: String| crate::ZooError::InvalidSpec {
        field: "form".into(),
        reason,
    };
    if reference.is_empty() {
        return Err(missing(format!(
            "{what}: the reference has no tensors to compare"
        )));
    }
    if let Some(extra) = other.keys().find(|k| !reference.contains_key(*k)) {
        return Err(missing(format!("{what}: `{extra}` has no reference")));
    }
    reference
        .iter()
        .map(|(name, r)| {
            let o = other
                .get(name)
                .ok_or_else(|| missing(format!("{what}: converted tensors lack `{name}`")))?;
            Ok((name.clone(), max_abs(&(r - o)?)?, max_abs(r)?))
        })
        .collect()
}

/// Everything one form produces on the shared batch.
struct FormRun {
    eval_logits: Tensor,
    train_logits: Tensor,
    input_grad: Tensor,
    /// Gradients of the trainable weights, converted to form C's layout.
    weight_grads: StateDict,
    /// Running statistics after the train step, in form C's layout.
    running_stats: StateDict,
}

/// The gradient of `tensor` in `grads`. A gradient that backward did not produce is a broken
/// graph, not a zero gradient (comparing zeros with zeros would pass): an error naming it.
fn gradient(
    grads: &candle_core::backprop::GradStore,
    tensor: &Tensor,
    form: BlockForm,
    of: &str,
) -> Result<Tensor> {
    grads
        .get(tensor)
        .cloned()
        .ok_or_else(|| crate::ZooError::InvalidSpec {
            field: "form".into(),
            reason: format!("form {form}: backward produced no gradient for {of}"),
        })
}

fn run_form(spec: &NetSpec, state: &StateDict, x: &Tensor, direction: &Tensor) -> Result<FormRun> {
    let model = ResNet::new(spec, state)?;
    let eval_logits = model.forward_t(x, false)?;
    let input = Var::from_tensor(x)?;
    let train_logits = model.forward_t(input.as_tensor(), true)?;
    // A random projection of the logits, so every output contributes a distinct gradient.
    let loss = (&train_logits * direction)?.sum_all()?;
    let grads = loss.backward()?;
    let input_grad = gradient(&grads, input.as_tensor(), spec.form, "the input")?;
    let mut weight_grads = StateDict::new();
    for (name, var) in model.params().trainable() {
        weight_grads.insert(
            name.clone(),
            gradient(&grads, var.as_tensor(), spec.form, name)?,
        );
    }
    let weight_grads = convert(spec, &weight_grads, spec.form, BlockForm::C)?;
    let running_stats: StateDict = model
        .params()
        .to_state()?
        .into_iter()
        .filter(|(k, _)| k.ends_with("running_mean") || k.ends_with("running_var"))
        .collect();
    let running_stats = convert(spec, &running_stats, spec.form, BlockForm::C)?;
    Ok(FormRun {
        eval_logits,
        train_logits,
        input_grad,
        weight_grads,
        running_stats,
    })
}

fn with_form(spec: &NetSpec, form: BlockForm) -> NetSpec {
    NetSpec {
        form,
        ..spec.clone()
    }
}

/// Forms A and B against form C for one model, on a batch of `batch_size`, computed in
/// `dtype`. Deep nets in train mode amplify rounding: a BN channel that ReLU left nearly
/// constant divides by a tiny deviation, so f32 differences of 1e-7 in the sum over paths
/// can grow past 1e-5 in a 50-layer gradient. f64 separates the identity of the functions
/// from that conditioning; small nets pass in f32 too.
pub fn block_forms(
    spec: &NetSpec,
    seed: u64,
    batch_size: usize,
    dtype: DType,
) -> Result<Vec<Check>> {
    block_forms_converted(spec, seed, batch_size, dtype, &convert, &Device::Cpu)
}

/// How form C's weights become another form's: [`convert`], or in tests a deliberately
/// wrong conversion that the checks must catch.
pub type Converter = dyn Fn(&NetSpec, &StateDict, BlockForm, BlockForm) -> Result<StateDict>;

/// Weights made on the CPU (where every draw is seeded), moved to `device`.
fn moved(state: StateDict, device: &Device) -> Result<StateDict> {
    state
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_device(device)?)))
        .collect()
}

/// [`block_forms`] with the weights of forms A and B made by `to_form` from form C's, run on
/// `device` (weights and inputs are drawn on the CPU, so every device sees the same ones).
pub fn block_forms_converted(
    spec: &NetSpec,
    seed: u64,
    batch_size: usize,
    dtype: DType,
    to_form: &Converter,
    device: &Device,
) -> Result<Vec<Check>> {
    let cpu = Device::Cpu;
    let grouped = with_form(spec, BlockForm::C);
    let mut state = init_weights(&grouped, seed, &cpu)?;
    randomize_batch_norm(&mut state, seed)?;
    let state = moved(cast(state, dtype)?, device)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(1));
    let x = random_tensor(
        &mut rng,
        &[
            batch_size,
            spec.in_channels,
            spec.input_size,
            spec.input_size,
        ],
        &cpu,
        dtype,
    )?
    .to_device(device)?;
    let direction =
        random_tensor(&mut rng, &[batch_size, spec.classes], &cpu, dtype)?.to_device(device)?;

    let reference = run_form(&grouped, &state, &x, &direction)?;
    let mut checks = Vec::new();
    for form in [BlockForm::A, BlockForm::B] {
        let spec_f = with_form(spec, form);
        let state_f = to_form(&grouped, &state, BlockForm::C, form)?;
        let run = run_form(&spec_f, &state_f, &x, &direction)?;
        let label = |what: &str| format!("form {form} vs C: {what}");
        checks.push(Check::new(
            label("logits (eval)"),
            max_abs(&(&run.eval_logits - &reference.eval_logits)?)?,
            max_abs(&reference.eval_logits)?,
        ));
        checks.push(Check::new(
            label("logits (train)"),
            max_abs(&(&run.train_logits - &reference.train_logits)?)?,
            max_abs(&reference.train_logits)?,
        ));
        checks.push(Check::new(
            label("input gradient"),
            max_abs(&(&run.input_grad - &reference.input_grad)?)?,
            max_abs(&reference.input_grad)?,
        ));
        let what = label("weight gradients");
        let tensors = compare_states(&what, &reference.weight_grads, &run.weight_grads)?;
        checks.push(Check::per_tensor(what, &tensors));
        let what = label("BN running statistics after a train step");
        let tensors = compare_states(&what, &reference.running_stats, &run.running_stats)?;
        checks.push(Check::per_tensor(what, &tensors));
    }
    Ok(checks)
}

/// The depth-2 pair of Fig. 4: a block of C paths (3x3 to d, 3x3 back to `channels`),
/// summed, and the dense block of width C*d. Both share stem and classifier.
pub fn depth2_pair(
    cardinality: usize,
    path_width: usize,
    channels: usize,
    input_size: usize,
) -> (NetSpec, NetSpec) {
    let aggregated = NetSpec {
        stem: Stem::Cifar {
            channels,
            stride: 1,
        },
        stages: vec![StageSpec {
            blocks: 1,
            stride: 1,
            planes: channels,
        }],
        block: BlockKind::Basic,
        cardinality,
        bottleneck_width: path_width,
        expansion: 1,
        form: BlockForm::A,
        in_channels: 3,
        input_size,
        classes: 10,
        zero_init_last_bn: false,
        aggregated_depth2: true,
    };
    let wide = NetSpec {
        cardinality: 1,
        bottleneck_width: cardinality * path_width,
        form: BlockForm::C,
        aggregated_depth2: false,
        ..aggregated.clone()
    };
    (aggregated, wide)
}

/// Aggregated depth-2 block against its wide dense twin: outputs, gradients, complexity.
pub fn depth2(
    cardinality: usize,
    path_width: usize,
    channels: usize,
    seed: u64,
    dtype: DType,
) -> Result<Vec<Check>> {
    depth2_on(cardinality, path_width, channels, seed, dtype, &Device::Cpu)
}

/// [`depth2`] on `device`.
pub fn depth2_on(
    cardinality: usize,
    path_width: usize,
    channels: usize,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<Vec<Check>> {
    let cpu = Device::Cpu;
    let (aggregated, wide) = depth2_pair(cardinality, path_width, channels, 8);
    let mut state = init_weights(&wide, seed, &cpu)?;
    randomize_batch_norm(&mut state, seed)?;
    let state = moved(cast(state, dtype)?, device)?;
    // The wide block's tensors are exactly the aggregated block's form-C layout.
    let state_agg = convert(&aggregated, &state, BlockForm::C, BlockForm::A)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(2));
    let x = random_tensor(&mut rng, &[4, 3, 8, 8], &cpu, dtype)?.to_device(device)?;
    let direction = random_tensor(&mut rng, &[4, 10], &cpu, dtype)?.to_device(device)?;
    let reference = run_form(&wide, &state, &x, &direction)?;
    let run = run_form(&aggregated, &state_agg, &x, &direction)?;
    let label = |what: &str| {
        format!(
            "depth-2 aggregated {cardinality}x{path_width}d vs wide {}: {what}",
            cardinality * path_width
        )
    };
    let mut checks = vec![
        Check::new(
            label("logits (eval)"),
            max_abs(&(&run.eval_logits - &reference.eval_logits)?)?,
            max_abs(&reference.eval_logits)?,
        ),
        Check::new(
            label("logits (train)"),
            max_abs(&(&run.train_logits - &reference.train_logits)?)?,
            max_abs(&reference.train_logits)?,
        ),
        Check::new(
            label("input gradient"),
            max_abs(&(&run.input_grad - &reference.input_grad)?)?,
            max_abs(&reference.input_grad)?,
        ),
    ];
    let what = label("weight gradients");
    let tensors = compare_states(&what, &reference.weight_grads, &run.weight_grads)?;
    checks.push(Check::per_tensor(what, &tensors));
    let (agg, dense) = (Complexity::of(&aggregated)?, Complexity::of(&wide)?);
    checks.push(Check::new(
        label("params"),
        agg.params.abs_diff(dense.params) as f64,
        0.0,
    ));
    checks.push(Check::new(
        label("MACs"),
        agg.macs.abs_diff(dense.macs) as f64,
        0.0,
    ));
    Ok(checks)
}

/// All checks for one model: its block forms, then the depth-2 pair at the model's first
/// stage (C and d of the model when C > 1, else the paper's Fig. 4 setting, 32x4d on 64).
pub fn run_all(spec: &NetSpec, seed: u64, batch_size: usize, dtype: DType) -> Result<Vec<Check>> {
    run_all_with_progress(spec, seed, batch_size, dtype, &mut |_| {})
}

/// [`run_all`], calling `progress` with the name of each step as it starts.
pub fn run_all_with_progress(
    spec: &NetSpec,
    seed: u64,
    batch_size: usize,
    dtype: DType,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<Check>> {
    run_all_on(spec, seed, batch_size, dtype, &Device::Cpu, progress)
}

/// [`run_all_with_progress`] on `device` (a GPU checks candle's own ops there).
pub fn run_all_on(
    spec: &NetSpec,
    seed: u64,
    batch_size: usize,
    dtype: DType,
    device: &Device,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<Check>> {
    spec.validate()?;
    progress("forms A, B and C: forward and backward");
    let mut checks = block_forms_converted(spec, seed, batch_size, dtype, &convert, device)?;
    progress("depth-2 aggregated block vs wide block");
    let (cardinality, path_width, channels) = if spec.cardinality > 1 {
        (
            spec.cardinality,
            spec.path_width(0),
            spec.stage_out_channels(0),
        )
    } else {
        (32, 4, 64)
    };
    checks.extend(depth2_on(
        cardinality,
        path_width,
        channels,
        seed,
        dtype,
        device,
    )?);
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wrong small tensor beside a large one: within a tolerance relative to the largest
    /// magnitude of all, outside its own.
    #[test]
    fn per_tensor_tolerance_catches_a_wrong_small_tensor() {
        let tensors = vec![
            ("large".to_string(), 1e-3, 1e3),
            ("small".to_string(), 1e-4, 1e-2),
        ];
        let check = Check::per_tensor("weight gradients".into(), &tensors);
        assert!(!check.passed);
        assert_eq!(check.tensor.as_deref(), Some("small"));
        assert_eq!(check.tolerance, RELATIVE_TOLERANCE * 1e-2);
        // The same differences under one scale would pass.
        assert!(Check::new("all".into(), 1e-4, 1e3).passed);
        // A zero reference with any difference fails; equal zeros pass.
        let zero = vec![("z".to_string(), 1e-12, 0.0)];
        assert!(!Check::per_tensor("z".into(), &zero).passed);
        let equal = vec![("z".to_string(), 0.0, 0.0)];
        assert!(Check::per_tensor("z".into(), &equal).passed);
    }

    #[test]
    fn a_missing_tensor_is_an_error() {
        let device = Device::Cpu;
        let t = Tensor::ones(2, DType::F32, &device).unwrap();
        let reference: StateDict = [("a".to_string(), t.clone()), ("b".to_string(), t.clone())]
            .into_iter()
            .collect();
        let other: StateDict = [("a".to_string(), t)].into_iter().collect();
        let err = compare_states("grads", &reference, &other).unwrap_err();
        assert!(err.to_string().contains("lack `b`"), "{err}");
        let err = compare_states("grads", &StateDict::new(), &StateDict::new()).unwrap_err();
        assert!(err.to_string().contains("no tensors"), "{err}");
    }

    #[test]
    fn a_missing_gradient_is_an_error_not_zeros() {
        let x = candle_core::Var::new(&[1f64, 2.0], &candle_core::Device::Cpu).unwrap();
        let unrelated = candle_core::Var::new(&[3f64], &candle_core::Device::Cpu).unwrap();
        let grads = x.as_tensor().sum_all().unwrap().backward().unwrap();
        assert!(gradient(&grads, x.as_tensor(), BlockForm::A, "the input").is_ok());
        let err = gradient(&grads, unrelated.as_tensor(), BlockForm::A, "the input")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("form A: backward produced no gradient for the input"),
            "{err}"
        );
    }
}
