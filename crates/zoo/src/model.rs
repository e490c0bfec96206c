//! candle modules instantiated from a spec and a set of weights.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{BatchNorm, Module, ModuleT};

use crate::error::{Result, ZooError};
use crate::layout::{self, block_prefix};
use crate::spec::{BlockForm, BlockKind, BlockShape, NetSpec, Stem};
use crate::StateDict;

/// A model's tensors as candle `Var`s: gradients flow to them and the trainer updates them
/// in place. Running statistics are `Var`s too (BN updates them), but are not trained.
#[derive(Debug, Clone, Default)]
pub struct Params {
    vars: BTreeMap<String, Var>,
}

impl Params {
    pub fn from_state(state: &StateDict) -> Result<Params> {
        let vars = state
            .iter()
            .map(|(k, t)| Ok((k.clone(), Var::from_tensor(t)?)))
            .collect::<Result<_>>()?;
        Ok(Params { vars })
    }

    pub fn get(&self, name: &str) -> Result<Tensor> {
        self.vars
            .get(name)
            .map(|v| v.as_tensor().clone())
            .ok_or_else(|| ZooError::InvalidSpec {
                field: "weights".into(),
                reason: format!("tensor `{name}` is missing"),
            })
    }

    pub fn var(&self, name: &str) -> Option<&Var> {
        self.vars.get(name)
    }

    /// A snapshot of the current values (detached copies of the tensors' storage).
    pub fn to_state(&self) -> Result<StateDict> {
        self.vars
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().detach().copy()?)))
            .collect()
    }

    /// Trainable tensors: everything but BN running statistics.
    pub fn trainable(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.vars
            .iter()
            .filter(|(k, _)| !(k.ends_with("running_mean") || k.ends_with("running_var")))
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.vars.keys()
    }

    /// Number of trainable scalars (the paper's "# params").
    pub fn count(&self) -> usize {
        self.trainable().map(|(_, v)| v.elem_count()).sum()
    }

    pub fn len(&self) -> usize {
        self.vars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }
}

const BN_EPS: f64 = 1e-5;

/// Which implementation of convolution, batch norm and the residual add a model runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Kernels {
    /// cardinal's fused CPU kernels (`cardinal_kernels`) on the CPU,
    /// candle's own ops on other devices.
    #[default]
    Cardinal,
    /// candle's own ops everywhere: the reference the kernels are tested and timed against.
    Candle,
}

/// How a model's products are computed: in f32, or as PyTorch's bf16 autocast does
/// (PyTorch Lightning's `bf16-mixed`): convolutions and the classifier multiply bf16
/// inputs and bf16 weights, rounded to nearest even from the f32 master copy each step,
/// and accumulate in f32; batch norm, the loss and the optimizer stay f32.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Precision {
    #[default]
    #[serde(rename = "f32")]
    F32,
    #[serde(rename = "bf16-mixed")]
    Bf16Mixed,
}

impl Precision {
    /// What training defaults to on this machine: bf16-mixed where the CPU multiplies bf16
    /// in hardware (AMX or AVX512-BF16, as `CARDINAL_ISA` leaves it), f32 elsewhere, where
    /// bf16 products would only be emulated. `reports/precision` holds the accuracy
    /// comparison this rests on.
    pub fn default_here() -> Precision {
        if cardinal_kernels::isa::selected() >= cardinal_kernels::isa::Isa::Avx512Bf16 {
            Precision::Bf16Mixed
        } else {
            Precision::F32
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16Mixed => "bf16-mixed",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Precision, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16-mixed" => Ok(Precision::Bf16Mixed),
            other => Err(format!(
                "unknown precision `{other}` (expected f32 or bf16-mixed)"
            )),
        }
    }
}

/// One forward pass: BN mode, whether the fused CPU kernels run, and whether their
/// products run in bf16. With the fused kernels, activations are channels-last
/// ([N, H, W, C]) from the network's input to its pooling; with candle's ops,
/// channels-first ([N, C, H, W]).
#[derive(Debug, Clone, Copy)]
struct Pass {
    train: bool,
    fused: bool,
    bf16: bool,
}

impl Pass {
    /// The channel dimension of the activations.
    fn channel_dim(&self) -> usize {
        if self.fused {
            3
        } else {
            1
        }
    }
}

#[derive(Debug, Clone)]
struct Conv {
    weight: Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
}

impl Conv {
    fn new(p: &Params, name: &str, stride: usize, groups: usize) -> Result<Conv> {
        let weight = p.get(&format!("{name}.weight"))?;
        let kernel = weight.dim(3)?;
        Ok(Conv {
            weight,
            stride,
            padding: kernel / 2,
            groups,
        })
    }
}

/// Where a convolution's output goes: into a batch norm (in bf16-mixed it is then written
/// in bf16, as autocast's convolutions write theirs, and the norm reads it so) or into a
/// sum with other convolutions' outputs (form A's paths: kept in f32, so the paths add in
/// f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutputTo {
    Norm,
    Sum,
}

impl Conv {
    fn forward(&self, x: &Tensor, pass: Pass, into: OutputTo) -> candle_core::Result<Tensor> {
        // On the CPU every convolution is cardinal's kernel (channels-last, products over
        // the whole batch); candle's conv2d stays the reference and serves other devices.
        if pass.fused {
            let options =
                cardinal_kernels::ConvOptions::new(self.stride, self.padding, self.groups)
                    .bf16(pass.bf16)
                    .out_bf16(pass.bf16 && into == OutputTo::Norm);
            cardinal_kernels::conv2d(x, &self.weight, options)
        } else {
            x.conv2d(&self.weight, self.padding, self.stride, 1, self.groups)
        }
    }
}

/// Batch norm with an optional ReLU folded in. On the CPU it runs the fused kernels of
/// `cardinal_kernels::norm`; elsewhere candle-nn's `BatchNorm`, which is also their reference.
#[derive(Debug, Clone)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    reference: BatchNorm,
}

/// PyTorch's default: running = (1 - momentum) * running + momentum * batch statistic.
const BN_MOMENTUM: f64 = 0.1;

/// What a batch norm's output feeds: a convolution (which, in bf16-mixed, reads it rounded
/// to bf16, so BN writes it so), a grouped convolution (the same, and BN keeps its output in
/// the cache, where that convolution's scattered reads find it) or anything else (f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feeds {
    Conv,
    GroupedConv,
    Other,
}

impl Feeds {
    /// What feeds `next`.
    fn conv(next: &Conv) -> Feeds {
        if next.groups > 1 {
            Feeds::GroupedConv
        } else {
            Feeds::Conv
        }
    }
}

impl Norm {
    fn forward(
        &self,
        x: &Tensor,
        pass: Pass,
        relu: bool,
        feeds: Feeds,
    ) -> candle_core::Result<Tensor> {
        if !pass.fused {
            let y = self.reference.forward_t(x, pass.train)?;
            return if relu { y.relu() } else { Ok(y) };
        }
        let out = cardinal_kernels::NormOutput {
            bf16: pass.bf16 && feeds != Feeds::Other,
            cached: feeds == Feeds::GroupedConv,
        };
        if !pass.train {
            return cardinal_kernels::norm::batch_norm_eval_to(
                x,
                &self.weight,
                &self.bias,
                (self.running_mean.as_tensor(), self.running_var.as_tensor()),
                BN_EPS,
                relu,
                out,
            );
        }
        let (y, stats) = cardinal_kernels::norm::batch_norm_train_to(
            x,
            &self.weight,
            &self.bias,
            BN_EPS,
            relu,
            out,
        )?;
        self.update_running(stats)?;
        Ok(y)
    }

    /// max(bn(x) + shortcut, 0): the end of a residual block. In training on the CPU it is
    /// one op (BN's output is never written); otherwise BN, then add+ReLU.
    fn forward_add_relu(
        &self,
        x: &Tensor,
        shortcut: &Tensor,
        pass: Pass,
    ) -> candle_core::Result<Tensor> {
        if pass.fused && pass.train {
            let (y, stats) = cardinal_kernels::batch_norm_add_relu_train(
                x,
                &self.weight,
                &self.bias,
                shortcut,
                BN_EPS,
            )?;
            self.update_running(stats)?;
            return Ok(y);
        }
        let residual = self.forward(x, pass, false, Feeds::Other)?;
        if pass.fused {
            cardinal_kernels::add_relu_op(&residual, shortcut)
        } else {
            (residual + shortcut)?.relu()
        }
    }

    /// Moves the running statistics toward a training batch's.
    fn update_running(&self, stats: cardinal_kernels::BatchStats) -> candle_core::Result<()> {
        // The running variance is unbiased, as in PyTorch (and candle-nn); count >= 2 is
        // checked by the kernel.
        let unbiased = stats.count as f64 / (stats.count - 1) as f64;
        let update = |running: &Var, batch: Vec<f64>| -> candle_core::Result<()> {
            let old = running.as_tensor().detach();
            let batch = Tensor::from_vec(batch, old.dims(), old.device())?.to_dtype(old.dtype())?;
            running.set(&((old * (1.0 - BN_MOMENTUM))? + (batch * BN_MOMENTUM)?)?)
        };
        update(&self.running_mean, stats.mean)?;
        update(
            &self.running_var,
            stats.var.iter().map(|v| v * unbiased).collect(),
        )?;
        Ok(())
    }
}

fn batch_norm(p: &Params, name: &str) -> Result<Norm> {
    let tensor = |field: &str| p.get(&format!("{name}.{field}"));
    let var = |field: &str| {
        p.var(&format!("{name}.{field}"))
            .cloned()
            .ok_or_else(|| ZooError::InvalidSpec {
                field: "weights".into(),
                reason: format!("tensor `{name}.{field}` is missing"),
            })
    };
    let weight = tensor("weight")?;
    let reference = BatchNorm::new(
        weight.dim(0)?,
        tensor("running_mean")?,
        tensor("running_var")?,
        weight.clone(),
        tensor("bias")?,
        BN_EPS,
    )?;
    Ok(Norm {
        bias: tensor("bias")?,
        weight,
        running_mean: var("running_mean")?,
        running_var: var("running_var")?,
        reference,
    })
}

/// conv -> BN, optionally followed by ReLU.
fn conv_bn(
    conv: &Conv,
    bn: &Norm,
    x: &Tensor,
    pass: Pass,
    relu: bool,
    feeds: Feeds,
) -> candle_core::Result<Tensor> {
    bn.forward(&conv.forward(x, pass, OutputTo::Norm)?, pass, relu, feeds)
}

#[derive(Debug, Clone)]
struct Path {
    conv1: Conv,
    bn1: Norm,
    /// Bottlenecks only: the 3x3 of the path and its BN.
    middle: Option<(Conv, Norm)>,
    last: Conv,
}

#[derive(Debug, Clone)]
enum Body {
    /// Bottleneck in form C (one grouped 3x3) or form B (one 3x3 per path).
    Bottleneck {
        conv1: Conv,
        bn1: Norm,
        conv2: Vec<Conv>,
        bn2: Norm,
        conv3: Conv,
        bn3: Norm,
    },
    /// Depth-2 block with a dense first layer (forms B and C).
    Basic {
        conv1: Conv,
        bn1: Norm,
        conv2: Conv,
        bn2: Norm,
    },
    /// Form A: C paths summed, BN after the aggregation.
    Paths { paths: Vec<Path>, bn: Norm },
}

#[derive(Debug, Clone)]
struct Block {
    body: Body,
    downsample: Option<(Conv, Norm)>,
}

impl Block {
    fn new(p: &Params, spec: &NetSpec, prefix: &str, shape: &BlockShape) -> Result<Block> {
        let n = |s: &str| format!("{prefix}.{s}");
        let stride = shape.stride;
        let body = match (spec.block, spec.form) {
            (BlockKind::Bottleneck, BlockForm::C | BlockForm::B) => {
                let conv2 = if spec.form == BlockForm::B {
                    (0..shape.cardinality)
                        .map(|k| Conv::new(p, &n(&format!("conv2.{k}")), stride, 1))
                        .collect::<Result<_>>()?
                } else {
                    vec![Conv::new(p, &n("conv2"), stride, shape.cardinality)?]
                };
                Body::Bottleneck {
                    conv1: Conv::new(p, &n("conv1"), 1, 1)?,
                    bn1: batch_norm(p, &n("bn1"))?,
                    conv2,
                    bn2: batch_norm(p, &n("bn2"))?,
                    conv3: Conv::new(p, &n("conv3"), 1, 1)?,
                    bn3: batch_norm(p, &n("bn3"))?,
                }
            }
            (BlockKind::Basic, BlockForm::C | BlockForm::B) => Body::Basic {
                conv1: Conv::new(p, &n("conv1"), stride, 1)?,
                bn1: batch_norm(p, &n("bn1"))?,
                conv2: Conv::new(p, &n("conv2"), 1, 1)?,
                bn2: batch_norm(p, &n("bn2"))?,
            },
            (kind, BlockForm::A) => {
                let mut paths = Vec::with_capacity(shape.cardinality);
                for k in 0..shape.cardinality {
                    let q = |s: &str| n(&format!("paths.{k}.{s}"));
                    paths.push(match kind {
                        BlockKind::Bottleneck => Path {
                            conv1: Conv::new(p, &q("conv1"), 1, 1)?,
                            bn1: batch_norm(p, &q("bn1"))?,
                            middle: Some((
                                Conv::new(p, &q("conv2"), stride, 1)?,
                                batch_norm(p, &q("bn2"))?,
                            )),
                            last: Conv::new(p, &q("conv3"), 1, 1)?,
                        },
                        BlockKind::Basic => Path {
                            conv1: Conv::new(p, &q("conv1"), stride, 1)?,
                            bn1: batch_norm(p, &q("bn1"))?,
                            middle: None,
                            last: Conv::new(p, &q("conv2"), 1, 1)?,
                        },
                    });
                }
                let bn_name = match kind {
                    BlockKind::Bottleneck => n("bn3"),
                    BlockKind::Basic => n("bn2"),
                };
                Body::Paths {
                    paths,
                    bn: batch_norm(p, &bn_name)?,
                }
            }
        };
        let downsample = if shape.has_projection() {
            Some((
                Conv::new(p, &n("downsample.0"), stride, 1)?,
                batch_norm(p, &n("downsample.1"))?,
            ))
        } else {
            None
        };
        Ok(Block { body, downsample })
    }

    fn forward(&self, x: &Tensor, pass: Pass) -> candle_core::Result<Tensor> {
        // The residual branch up to its last BN's input, and that BN: it runs last, with the
        // shortcut's sum and the block's ReLU.
        let (pre_norm, last_norm) = match &self.body {
            Body::Bottleneck {
                conv1,
                bn1,
                conv2,
                bn2,
                conv3,
                bn3,
            } => {
                let feeds = match conv2.as_slice() {
                    [next] => Feeds::conv(next),
                    _ => Feeds::Conv,
                };
                let h = conv_bn(conv1, bn1, x, pass, true, feeds)?;
                let h = match conv2.as_slice() {
                    [grouped] => grouped.forward(&h, pass, OutputTo::Norm)?,
                    split => {
                        let dim = pass.channel_dim();
                        let width = h.dim(dim)? / split.len();
                        let parts = split
                            .iter()
                            .enumerate()
                            .map(|(k, conv)| {
                                let part = h.narrow(dim, k * width, width)?.contiguous()?;
                                conv.forward(&part, pass, OutputTo::Norm)
                            })
                            .collect::<candle_core::Result<Vec<_>>>()?;
                        Tensor::cat(&parts, dim)?
                    }
                };
                let h = bn2.forward(&h, pass, true, Feeds::Conv)?;
                (conv3.forward(&h, pass, OutputTo::Norm)?, bn3)
            }
            Body::Basic {
                conv1,
                bn1,
                conv2,
                bn2,
            } => {
                let h = conv_bn(conv1, bn1, x, pass, true, Feeds::conv(conv2))?;
                (conv2.forward(&h, pass, OutputTo::Norm)?, bn2)
            }
            Body::Paths { paths, bn } => {
                let mut sum: Option<Tensor> = None;
                for path in paths {
                    let mut h = conv_bn(&path.conv1, &path.bn1, x, pass, true, Feeds::Conv)?;
                    if let Some((conv, bn)) = &path.middle {
                        h = conv_bn(conv, bn, &h, pass, true, Feeds::Conv)?;
                    }
                    let out = path.last.forward(&h, pass, OutputTo::Sum)?;
                    sum = Some(match sum {
                        None => out,
                        Some(s) => (s + out)?,
                    });
                }
                (sum.expect("a block has at least one path"), bn)
            }
        };
        let shortcut = match &self.downsample {
            Some((conv, bn)) => conv_bn(conv, bn, x, pass, false, Feeds::Other)?,
            None => x.clone(),
        };
        last_norm.forward_add_relu(&pre_norm, &shortcut, pass)
    }
}

/// 3x3 max-pool, stride 2, padding 1, written with strided views so that it has a backward
/// pass (candle's max-pool backward requires kernel == stride): the reference, and the path
/// off the CPU. It always follows a ReLU, so zero padding gives the same result as -inf
/// padding.
fn max_pool_3x3_s2(x: &Tensor) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (out_h, out_w) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    // Pad to 2 * out + 2 so that every window offset 0..3 has 2 * out rows to stride over.
    let x = x
        .pad_with_zeros(2, 1, 2 * out_h + 1 - h)?
        .pad_with_zeros(3, 1, 2 * out_w + 1 - w)?;
    let mut pooled: Option<Tensor> = None;
    for dy in 0..3 {
        for dx in 0..3 {
            let view = x
                .narrow(2, dy, 2 * out_h)?
                .narrow(3, dx, 2 * out_w)?
                .reshape((n, c, out_h, 2, out_w, 2))?
                .narrow(3, 0, 1)?
                .narrow(5, 0, 1)?
                .reshape((n, c, out_h, out_w))?;
            pooled = Some(match pooled {
                None => view,
                Some(p) => p.maximum(&view)?,
            });
        }
    }
    Ok(pooled.expect("nine windows"))
}

/// A ResNet/ResNeXt built from a spec; `forward_t(x, train)` switches BN mode.
#[derive(Debug, Clone)]
pub struct ResNet {
    spec: NetSpec,
    params: Params,
    stem_conv: Conv,
    stem_bn: Norm,
    stages: Vec<Vec<Block>>,
    fc: candle_nn::Linear,
    kernels: Kernels,
    precision: Precision,
}

impl ResNet {
    /// Builds the model from weights laid out in the spec's form (see `init_weights` and
    /// `load_safetensors`); the weights are checked against the spec first.
    pub fn new(spec: &NetSpec, state: &StateDict) -> Result<ResNet> {
        spec.validate()?;
        let model = format!("{} {}", spec.depth(), spec.template());
        crate::weights::check_tensors(&layout::tensor_shapes(spec), state, "<weights>", &model)?;
        let p = Params::from_state(state)?;
        let stem_stride = match spec.stem {
            Stem::Imagenet { .. } => 2,
            Stem::Cifar { stride, .. } => stride,
        };
        let stem_conv = Conv::new(&p, "conv1", stem_stride, 1)?;
        let stem_bn = batch_norm(&p, "bn1")?;
        let stages = spec
            .block_shapes()
            .iter()
            .enumerate()
            .map(|(s, stage)| {
                stage
                    .iter()
                    .enumerate()
                    .map(|(b, shape)| Block::new(&p, spec, &block_prefix(s, b), shape))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let fc = candle_nn::Linear::new(p.get("fc.weight")?, Some(p.get("fc.bias")?));
        Ok(ResNet {
            spec: spec.clone(),
            params: p,
            stem_conv,
            stem_bn,
            stages,
            fc,
            kernels: Kernels::default(),
            precision: Precision::default(),
        })
    }

    /// Switches between cardinal's CPU kernels and candle's reference ops.
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }

    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// f32 or bf16-mixed products. bf16-mixed applies to the fused CPU kernels on f32
    /// models; candle's reference ops (and f64 models) always compute in their dtype.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Whether a pass over `x` runs bf16-mixed products.
    fn bf16(&self, x: &Tensor) -> bool {
        self.fused(x) && x.dtype() == DType::F32 && self.precision == Precision::Bf16Mixed
    }

    pub fn spec(&self) -> &NetSpec {
        &self.spec
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn device(&self) -> Device {
        self.fc.weight().device().clone()
    }

    /// Checks an input batch against the spec before it reaches a convolution.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        if x.rank() != 4 {
            return Err(ZooError::InputRank {
                shape: x.dims().to_vec(),
            });
        }
        let channels = x.dim(1)?;
        if x.dim(0)? == 0 || x.dim(2)? == 0 || x.dim(3)? == 0 {
            return Err(ZooError::InputRank {
                shape: x.dims().to_vec(),
            });
        }
        if channels != self.spec.in_channels {
            return Err(ZooError::InputChannels {
                expected: self.spec.in_channels,
                found: channels,
                shape: x.dims().to_vec(),
            });
        }
        Ok(())
    }

    /// Whether a pass over `x` runs the fused CPU kernels: f32 and f64 on the CPU (what
    /// models train and are checked in), unless candle's ops are chosen.
    fn fused(&self, x: &Tensor) -> bool {
        x.device().is_cpu()
            && matches!(x.dtype(), DType::F32 | DType::F64)
            && self.kernels == Kernels::Cardinal
    }

    /// Stem and residual stages: the feature map before pooling, from an input batch
    /// [N, C, H, W]. On the fused CPU kernels it is channels-last ([N, H, W, C]: the layout
    /// changes once, at the input), else channels-first; `forward_head` takes either.
    pub fn forward_features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(x)?;
        let pass = Pass {
            train,
            fused: self.fused(x),
            bf16: self.bf16(x),
        };
        let x = if pass.fused {
            x.permute((0, 2, 3, 1))?.contiguous()?
        } else {
            x.clone()
        };
        let mut h = conv_bn(&self.stem_conv, &self.stem_bn, &x, pass, true, Feeds::Other)?;
        if matches!(self.spec.stem, Stem::Imagenet { .. }) {
            h = if pass.fused {
                cardinal_kernels::max_pool_3x3_s2(&h)?
            } else {
                max_pool_3x3_s2(&h)?
            };
        }
        for stage in &self.stages {
            for block in stage {
                h = block.forward(&h, pass)?;
            }
        }
        Ok(h)
    }

    /// Global average pool and the classifier, on the feature map of `forward_features`.
    pub fn forward_head(&self, features: &Tensor) -> Result<Tensor> {
        let pooled = if self.fused(features) {
            cardinal_kernels::global_avg_pool(features)?
        } else {
            features.mean((2, 3))?
        };
        if !self.bf16(features) {
            return Ok(self.fc.forward(&pooled)?);
        }
        // bf16-mixed: the product of bf16-rounded inputs and weights, summed in f32 (the
        // gradients of the roundings pass through, rounded to bf16 as autocast's are).
        let round = |t: &Tensor| t.to_dtype(DType::BF16)?.to_dtype(DType::F32);
        let logits = round(&pooled)?.matmul(&round(self.fc.weight())?.t()?)?;
        Ok(match self.fc.bias() {
            Some(bias) => logits.broadcast_add(bias)?,
            None => logits,
        })
    }

    /// Logits [N, classes].
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let features = self.forward_features(x, train)?;
        self.forward_head(&features)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Uniform [0, 1) values (post-ReLU inputs: non-negative, so zero padding equals -inf
    /// padding), or normal ones, from a ChaCha stream of `seed`: a failure reproduces.
    fn seeded(shape: &[usize], seed: u64, normal: bool) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let count = shape.iter().product::<usize>();
        let values: Vec<f64> = (0..count)
            .map(|_| {
                if normal {
                    rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut rng)
                } else {
                    rng.random::<f64>()
                }
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn strided_max_pool_equals_candle_pool_on_zero_padded_input() {
        for (h, w) in [(16, 16), (15, 17), (7, 8), (1, 2)] {
            let x = seeded(&[2, 3, h, w], (h * 31 + w) as u64, false)
                .to_dtype(DType::F32)
                .unwrap();
            let ours = max_pool_3x3_s2(&x).unwrap();
            let padded = x
                .pad_with_zeros(2, 1, 1)
                .unwrap()
                .pad_with_zeros(3, 1, 1)
                .unwrap();
            let reference = padded.max_pool2d_with_stride(3, 2).unwrap();
            assert_eq!(ours.dims(), reference.dims(), "{h}x{w}");
            let diff = (ours - reference)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{h}x{w}");
        }
    }

    #[test]
    fn the_pool_op_matches_the_strided_reference_in_value_and_gradient() {
        use candle_core::Var;
        for (h, w) in [(16, 16), (15, 17), (7, 8), (2, 1)] {
            // Post-ReLU inputs, as in the stem; continuous values, so no ties.
            let x = Var::from_tensor(&seeded(&[2, 3, h, w], (h * 31 + w) as u64, false)).unwrap();
            let weights = seeded(&[2, 3, (h - 1) / 2 + 1, (w - 1) / 2 + 1], 7, true);
            let mut results = Vec::new();
            let nhwc = |t: &Tensor| t.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
            let nchw = |t: &Tensor| t.permute((0, 3, 1, 2)).unwrap().contiguous().unwrap();
            let kernel = |x: &Tensor| -> candle_core::Result<Tensor> {
                Ok(nchw(&cardinal_kernels::max_pool_3x3_s2(&nhwc(x))?))
            };
            let pools: [&dyn Fn(&Tensor) -> candle_core::Result<Tensor>; 2] =
                [&max_pool_3x3_s2, &kernel];
            for pool in pools {
                let y = pool(x.as_tensor()).unwrap();
                let loss = (&y * &weights).unwrap().sum_all().unwrap();
                let grad = loss.backward().unwrap().remove(x.as_tensor()).unwrap();
                results.push((y, grad));
            }
            for (a, b) in [
                (&results[0].0, &results[1].0),
                (&results[0].1, &results[1].1),
            ] {
                let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                assert_eq!(diff.to_scalar::<f64>().unwrap(), 0.0, "{h}x{w}");
            }
        }
    }
}
