//! `NetSpec`: a residual network as plain data. Everything else (complexity, parameter
//! names, initialisation, candle modules) is derived from it, so a spec is the single source
//! of truth for a model.

use serde::{Deserialize, Serialize};

use crate::error::{Result, ZooError};

/// The layers before the first residual stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Stem {
    /// 7x7/2 convolution, BN, ReLU, 3x3/2 max-pool (ResNet/ResNeXt on ImageNet).
    Imagenet { channels: usize },
    /// One 3x3 convolution, BN, ReLU (the CIFAR networks; stride 2 halves small inputs
    /// cheaply for CPU training).
    Cifar { channels: usize, stride: usize },
}

impl Stem {
    pub fn channels(&self) -> usize {
        match self {
            Stem::Imagenet { channels } | Stem::Cifar { channels, .. } => *channels,
        }
    }
}

/// One stage: `blocks` residual blocks; the first one carries `stride` on its 3x3 conv.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    pub blocks: usize,
    pub stride: usize,
    /// The template width ("planes" in torchvision): the block outputs
    /// `planes * expansion` channels, and its per-group width is
    /// `bottleneck_width * planes / stages[0].planes`.
    pub planes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// Two 3x3 convolutions (ResNet-18/34); a depth-2 block.
    Basic,
    /// 1x1 reduce, 3x3 (grouped for C > 1), 1x1 expand; a depth-3 block.
    Bottleneck,
}

/// The three equivalent forms of an aggregated block (paper Fig. 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BlockForm {
    /// C parallel paths, summed; BN after the aggregation (the paper's footnote).
    A,
    /// Early concatenation: one wide 1x1, C separate 3x3 convs, concatenated, one 1x1.
    B,
    /// Grouped convolution (torchvision's layout and parameter names).
    C,
}

impl BlockForm {
    pub const ALL: [BlockForm; 3] = [BlockForm::A, BlockForm::B, BlockForm::C];
}

impl std::fmt::Display for BlockForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            BlockForm::A => "A",
            BlockForm::B => "B",
            BlockForm::C => "C",
        };
        f.write_str(s)
    }
}

fn default_form() -> BlockForm {
    BlockForm::C
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSpec {
    pub stem: Stem,
    pub stages: Vec<StageSpec>,
    pub block: BlockKind,
    /// C: the number of paths (groups of the 3x3 convolution).
    pub cardinality: usize,
    /// d: the width of one path in the first stage; it scales with `planes` in later stages.
    pub bottleneck_width: usize,
    /// Output channels of a block per template channel (4 for bottlenecks, 1 for basic).
    pub expansion: usize,
    #[serde(default = "default_form")]
    pub form: BlockForm,
    pub in_channels: usize,
    pub input_size: usize,
    pub classes: usize,
    /// Start every block's last BN with gamma = 0 (off by default, as in the paper).
    #[serde(default)]
    pub zero_init_last_bn: bool,
    /// Permit C > 1 on a basic block. Such a block is only a wider dense block (Fig. 4);
    /// the depth-2 experiment builds it on purpose to show exactly that.
    #[serde(default)]
    pub aggregated_depth2: bool,
}

/// The resolved shape of one block, as every consumer (complexity, init, modules) needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockShape {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of one path (d at this stage).
    pub path_width: usize,
    pub cardinality: usize,
    pub stride: usize,
    /// Spatial size of the block's input.
    pub input_size: usize,
}

impl BlockShape {
    /// Total width of the aggregated layer: C * d.
    pub fn group_width(&self) -> usize {
        self.cardinality * self.path_width
    }
    pub fn has_projection(&self) -> bool {
        self.stride != 1 || self.in_channels != self.out_channels
    }
    pub fn output_size(&self) -> usize {
        conv_output_size(self.input_size, 3, self.stride, 1)
    }
}

/// Output size of a convolution or pooling window.
pub fn conv_output_size(input: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (input + 2 * padding).saturating_sub(kernel) / stride + 1
}

/// Largest accepted sizes (see `NetSpec::validate`).
pub const MAX_WIDTH: usize = 1 << 14;
pub const MAX_EXPANSION: usize = 64;
pub const MAX_INPUT_SIZE: usize = 1 << 13;
pub const MAX_CLASSES: usize = 1 << 20;
pub const MAX_STAGES: usize = 16;
pub const MAX_BLOCKS: usize = 1 << 12;
pub const MAX_STRIDE: usize = 64;

impl NetSpec {
    fn invalid(field: &str, reason: impl Into<String>) -> ZooError {
        ZooError::InvalidSpec {
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// Checks that the spec describes a network that can be built; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("cardinality", self.cardinality),
            ("bottleneck_width", self.bottleneck_width),
            ("expansion", self.expansion),
            ("in_channels", self.in_channels),
            ("input_size", self.input_size),
            ("classes", self.classes),
            ("stem.channels", self.stem.channels()),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(Self::invalid(field, "must be at least 1"));
            }
        }
        // Far beyond any network of the literature, yet small enough that the layout can be
        // listed and every count computed: a typo such as `blocks: 100000000` is refused here
        // instead of exhausting memory.
        let stride_limit = |field: &str, value: usize| {
            if value > MAX_STRIDE {
                Err(Self::invalid(
                    field,
                    format!("{value} is more than the largest stride supported, {MAX_STRIDE}"),
                ))
            } else {
                Ok(())
            }
        };
        let bounded = [
            ("cardinality", self.cardinality, MAX_WIDTH),
            ("bottleneck_width", self.bottleneck_width, MAX_WIDTH),
            ("expansion", self.expansion, MAX_EXPANSION),
            ("in_channels", self.in_channels, MAX_WIDTH),
            ("input_size", self.input_size, MAX_INPUT_SIZE),
            ("classes", self.classes, MAX_CLASSES),
            ("stem.channels", self.stem.channels(), MAX_WIDTH),
            ("stages", self.stages.len(), MAX_STAGES),
        ];
        for (field, value, limit) in bounded {
            if value > limit {
                return Err(Self::invalid(
                    field,
                    format!("{value} is more than the largest supported, {limit}"),
                ));
            }
        }
        if let Stem::Cifar { stride, .. } = self.stem {
            stride_limit("stem.stride", stride)?;
        }
        for (i, stage) in self.stages.iter().enumerate() {
            stride_limit(&format!("stages[{i}].stride"), stage.stride)?;
            for (field, value, limit) in [
                ("blocks", stage.blocks, MAX_BLOCKS),
                ("planes", stage.planes, MAX_WIDTH),
            ] {
                if value > limit {
                    return Err(Self::invalid(
                        &format!("stages[{i}].{field}"),
                        format!("{value} is more than the largest supported, {limit}"),
                    ));
                }
            }
        }
        if let Stem::Cifar { stride, .. } = self.stem {
            if stride == 0 {
                return Err(Self::invalid("stem.stride", "must be at least 1"));
            }
        }
        if self.stages.is_empty() {
            return Err(Self::invalid(
                "stages",
                "a network needs at least one stage",
            ));
        }
        for (i, stage) in self.stages.iter().enumerate() {
            if stage.blocks == 0 {
                return Err(Self::invalid(
                    &format!("stages[{i}].blocks"),
                    "must be at least 1",
                ));
            }
            if stage.stride == 0 {
                return Err(Self::invalid(
                    &format!("stages[{i}].stride"),
                    "must be at least 1",
                ));
            }
            if stage.planes == 0 {
                return Err(Self::invalid(
                    &format!("stages[{i}].planes"),
                    "must be at least 1",
                ));
            }
            let base = self.stages[0].planes;
            if !(self.bottleneck_width * stage.planes).is_multiple_of(base) {
                return Err(Self::invalid(
                    "bottleneck_width",
                    format!(
                        "d = {} does not scale to an integer path width in stage {i} \
                         (d * planes = {} * {} is not divisible by the first stage's planes {base})",
                        self.bottleneck_width, self.bottleneck_width, stage.planes
                    ),
                ));
            }
        }
        if self.block == BlockKind::Basic && self.cardinality > 1 && !self.aggregated_depth2 {
            return Err(Self::invalid(
                "cardinality",
                format!(
                    "C = {} on a basic (depth-2) block: aggregating depth-2 paths only gives a \
                     wider dense block (paper Fig. 4), so ResNeXt uses bottlenecks. Set \
                     `aggregated_depth2: true` to build it anyway, as the depth-2 experiment does",
                    self.cardinality
                ),
            ));
        }
        let mut size = self.stem_output_size();
        for (i, stage) in self.stages.iter().enumerate() {
            size = conv_output_size(size, 3, stage.stride, 1);
            if size == 0 {
                return Err(Self::invalid(
                    "input_size",
                    format!(
                        "{} is too small: nothing is left after stage {i}",
                        self.input_size
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Spatial size after the stem.
    pub fn stem_output_size(&self) -> usize {
        match self.stem {
            Stem::Imagenet { .. } => {
                let conv = conv_output_size(self.input_size, 7, 2, 3);
                conv_output_size(conv, 3, 2, 1)
            }
            Stem::Cifar { stride, .. } => conv_output_size(self.input_size, 3, stride, 1),
        }
    }

    /// Path width d at stage `stage` (d doubles when planes double).
    pub fn path_width(&self, stage: usize) -> usize {
        self.bottleneck_width * self.stages[stage].planes / self.stages[0].planes
    }

    pub fn stage_out_channels(&self, stage: usize) -> usize {
        self.stages[stage].planes * self.expansion
    }

    /// Channels entering the classifier.
    pub fn feature_channels(&self) -> usize {
        self.stage_out_channels(self.stages.len() - 1)
    }

    /// Every block's shape, stage by stage. Assumes a validated spec.
    pub fn block_shapes(&self) -> Vec<Vec<BlockShape>> {
        let mut in_channels = self.stem.channels();
        let mut size = self.stem_output_size();
        let mut stages = Vec::with_capacity(self.stages.len());
        for (s, stage) in self.stages.iter().enumerate() {
            let out_channels = self.stage_out_channels(s);
            let mut blocks = Vec::with_capacity(stage.blocks);
            for b in 0..stage.blocks {
                let stride = if b == 0 { stage.stride } else { 1 };
                let shape = BlockShape {
                    in_channels,
                    out_channels,
                    path_width: self.path_width(s),
                    cardinality: self.cardinality,
                    stride,
                    input_size: size,
                };
                size = shape.output_size();
                in_channels = out_channels;
                blocks.push(shape);
            }
            stages.push(blocks);
        }
        stages
    }

    /// Number of weighted layers, counted as the paper names networks (ResNet-50 has 50).
    pub fn depth(&self) -> usize {
        let per_block = match self.block {
            BlockKind::Basic => 2,
            BlockKind::Bottleneck => 3,
        };
        2 + per_block * self.stages.iter().map(|s| s.blocks).sum::<usize>()
    }

    /// The paper's template notation, e.g. "32x4d".
    pub fn template(&self) -> String {
        format!("{}x{}d", self.cardinality, self.bottleneck_width)
    }
}
