//! The layers of a spec, named and shaped, without tensors. Complexity, initialisation,
//! weight loading and the form converter all read this one list, so the parameter count of
//! a spec and of its instantiated model cannot drift apart.
//!
//! Counting rules (the paper's, and torchvision's published figures): params are conv and
//! fc weights, the fc bias and BN gamma/beta (running statistics are buffers, not params);
//! MACs are the multiply-adds of conv and fc layers only.

use serde::Serialize;

use crate::spec::{BlockForm, BlockKind, BlockShape, NetSpec, Stem};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LayerKind {
    Conv {
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        groups: usize,
    },
    BatchNorm {
        channels: usize,
    },
    Linear {
        in_features: usize,
        out_features: usize,
    },
}

/// What a named tensor is, so that initialisation and the optimizer can treat it right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorRole {
    ConvWeight,
    LinearWeight,
    LinearBias,
    BnWeight,
    BnBias,
    RunningMean,
    RunningVar,
}

impl TensorRole {
    /// Buffers are saved and loaded but are not trained and do not count as params.
    pub fn is_buffer(self) -> bool {
        matches!(self, TensorRole::RunningMean | TensorRole::RunningVar)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layer {
    /// Parameter prefix, torchvision-style: `layer1.0.conv2`.
    pub name: String,
    #[serde(flatten)]
    pub kind: LayerKind,
    /// Spatial size of the output (1 for the classifier).
    pub output_size: usize,
    /// The block's last BN, the one `zero_init_last_bn` zeroes.
    #[serde(skip)]
    pub last_bn_of_block: bool,
}

impl Layer {
    /// The layer's parameter count (saturating at `u64::MAX`: see [`Layer::checked_params`]).
    pub fn params(&self) -> u64 {
        self.checked_params().unwrap_or(u64::MAX)
    }

    /// The layer's multiply-adds (saturating at `u64::MAX`: see [`Layer::checked_macs`]).
    pub fn macs(&self) -> u64 {
        self.checked_macs().unwrap_or(u64::MAX)
    }

    /// The parameter count, or None where it does not fit in 64 bits.
    pub fn checked_params(&self) -> Option<u64> {
        let product = |factors: &[usize]| {
            factors
                .iter()
                .try_fold(1u64, |acc, &f| acc.checked_mul(f as u64))
        };
        match self.kind {
            LayerKind::Conv {
                in_channels,
                out_channels,
                kernel,
                groups,
                ..
            } => product(&[out_channels, in_channels / groups, kernel, kernel]),
            LayerKind::BatchNorm { channels } => product(&[2, channels]),
            LayerKind::Linear {
                in_features,
                out_features,
            } => product(&[in_features, out_features])?.checked_add(out_features as u64),
        }
    }

    /// The multiply-adds, or None where they do not fit in 64 bits.
    pub fn checked_macs(&self) -> Option<u64> {
        match self.kind {
            LayerKind::Conv { .. } => {
                // A conv costs its weight count once per output position.
                let positions = (self.output_size as u64).checked_mul(self.output_size as u64)?;
                self.checked_params()?.checked_mul(positions)
            }
            LayerKind::BatchNorm { .. } => Some(0),
            LayerKind::Linear {
                in_features,
                out_features,
            } => (in_features as u64).checked_mul(out_features as u64),
        }
    }

    /// The tensors this layer owns: full name, shape, role.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, TensorRole)> {
        let n = |suffix: &str| format!("{}.{suffix}", self.name);
        match self.kind {
            LayerKind::Conv {
                in_channels,
                out_channels,
                kernel,
                groups,
                ..
            } => vec![(
                n("weight"),
                vec![out_channels, in_channels / groups, kernel, kernel],
                TensorRole::ConvWeight,
            )],
            LayerKind::BatchNorm { channels } => vec![
                (n("weight"), vec![channels], TensorRole::BnWeight),
                (n("bias"), vec![channels], TensorRole::BnBias),
                (n("running_mean"), vec![channels], TensorRole::RunningMean),
                (n("running_var"), vec![channels], TensorRole::RunningVar),
            ],
            LayerKind::Linear {
                in_features,
                out_features,
            } => vec![
                (
                    n("weight"),
                    vec![out_features, in_features],
                    TensorRole::LinearWeight,
                ),
                (n("bias"), vec![out_features], TensorRole::LinearBias),
            ],
        }
    }
}

fn conv(
    name: String,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
    output_size: usize,
) -> Layer {
    Layer {
        name,
        kind: LayerKind::Conv {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding: kernel / 2,
            groups,
        },
        output_size,
        last_bn_of_block: false,
    }
}

fn bn(name: String, channels: usize, output_size: usize) -> Layer {
    Layer {
        name,
        kind: LayerKind::BatchNorm { channels },
        output_size,
        last_bn_of_block: false,
    }
}

fn last_bn(name: String, channels: usize, output_size: usize) -> Layer {
    Layer {
        last_bn_of_block: true,
        ..bn(name, channels, output_size)
    }
}

/// Block prefix, torchvision's: stage 0, block 2 is `layer1.2`.
pub fn block_prefix(stage: usize, block: usize) -> String {
    format!("layer{}.{block}", stage + 1)
}

/// The layers of one block in the given form.
pub fn block_layers(kind: BlockKind, form: BlockForm, prefix: &str, b: &BlockShape) -> Vec<Layer> {
    let p = |s: &str| format!("{prefix}.{s}");
    let (size_in, size_out) = (b.input_size, b.output_size());
    let (c, d, width) = (b.cardinality, b.path_width, b.group_width());
    let mut layers = Vec::new();
    match (kind, form) {
        (BlockKind::Bottleneck, BlockForm::C) => {
            layers.push(conv(p("conv1"), b.in_channels, width, 1, 1, 1, size_in));
            layers.push(bn(p("bn1"), width, size_in));
            layers.push(conv(p("conv2"), width, width, 3, b.stride, c, size_out));
            layers.push(bn(p("bn2"), width, size_out));
            layers.push(conv(p("conv3"), width, b.out_channels, 1, 1, 1, size_out));
            layers.push(last_bn(p("bn3"), b.out_channels, size_out));
        }
        (BlockKind::Bottleneck, BlockForm::B) => {
            layers.push(conv(p("conv1"), b.in_channels, width, 1, 1, 1, size_in));
            layers.push(bn(p("bn1"), width, size_in));
            for k in 0..c {
                layers.push(conv(
                    p(&format!("conv2.{k}")),
                    d,
                    d,
                    3,
                    b.stride,
                    1,
                    size_out,
                ));
            }
            layers.push(bn(p("bn2"), width, size_out));
            layers.push(conv(p("conv3"), width, b.out_channels, 1, 1, 1, size_out));
            layers.push(last_bn(p("bn3"), b.out_channels, size_out));
        }
        (BlockKind::Bottleneck, BlockForm::A) => {
            for k in 0..c {
                let q = |s: &str| p(&format!("paths.{k}.{s}"));
                layers.push(conv(q("conv1"), b.in_channels, d, 1, 1, 1, size_in));
                layers.push(bn(q("bn1"), d, size_in));
                layers.push(conv(q("conv2"), d, d, 3, b.stride, 1, size_out));
                layers.push(bn(q("bn2"), d, size_out));
                layers.push(conv(q("conv3"), d, b.out_channels, 1, 1, 1, size_out));
            }
            layers.push(last_bn(p("bn3"), b.out_channels, size_out));
        }
        // A depth-2 block has no grouped layer: its form B is its form C (Fig. 4).
        (BlockKind::Basic, BlockForm::B | BlockForm::C) => {
            layers.push(conv(
                p("conv1"),
                b.in_channels,
                width,
                3,
                b.stride,
                1,
                size_out,
            ));
            layers.push(bn(p("bn1"), width, size_out));
            layers.push(conv(p("conv2"), width, b.out_channels, 3, 1, 1, size_out));
            layers.push(last_bn(p("bn2"), b.out_channels, size_out));
        }
        (BlockKind::Basic, BlockForm::A) => {
            for k in 0..c {
                let q = |s: &str| p(&format!("paths.{k}.{s}"));
                layers.push(conv(q("conv1"), b.in_channels, d, 3, b.stride, 1, size_out));
                layers.push(bn(q("bn1"), d, size_out));
                layers.push(conv(q("conv2"), d, b.out_channels, 3, 1, 1, size_out));
            }
            layers.push(last_bn(p("bn2"), b.out_channels, size_out));
        }
    }
    if b.has_projection() {
        layers.push(conv(
            p("downsample.0"),
            b.in_channels,
            b.out_channels,
            1,
            b.stride,
            1,
            size_out,
        ));
        layers.push(bn(p("downsample.1"), b.out_channels, size_out));
    }
    layers
}

/// Every layer of a validated spec, in forward order, in the spec's block form.
pub fn layers(spec: &NetSpec) -> Vec<Layer> {
    let mut layers = Vec::new();
    let stem_channels = spec.stem.channels();
    match spec.stem {
        Stem::Imagenet { .. } => {
            let size = crate::spec::conv_output_size(spec.input_size, 7, 2, 3);
            let mut c = conv(
                "conv1".into(),
                spec.in_channels,
                stem_channels,
                7,
                2,
                1,
                size,
            );
            if let LayerKind::Conv { padding, .. } = &mut c.kind {
                *padding = 3;
            }
            layers.push(c);
            layers.push(bn("bn1".into(), stem_channels, size));
        }
        Stem::Cifar { stride, .. } => {
            let size = spec.stem_output_size();
            layers.push(conv(
                "conv1".into(),
                spec.in_channels,
                stem_channels,
                3,
                stride,
                1,
                size,
            ));
            layers.push(bn("bn1".into(), stem_channels, size));
        }
    }
    for (s, stage) in spec.block_shapes().iter().enumerate() {
        for (b, shape) in stage.iter().enumerate() {
            layers.extend(block_layers(
                spec.block,
                spec.form,
                &block_prefix(s, b),
                shape,
            ));
        }
    }
    layers.push(Layer {
        name: "fc".into(),
        kind: LayerKind::Linear {
            in_features: spec.feature_channels(),
            out_features: spec.classes,
        },
        output_size: 1,
        last_bn_of_block: false,
    });
    layers
}

/// Every tensor (params and buffers) of the spec, in forward order.
pub fn tensor_shapes(spec: &NetSpec) -> Vec<(String, Vec<usize>, TensorRole)> {
    layers(spec).iter().flat_map(|l| l.tensors()).collect()
}
