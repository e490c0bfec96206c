//! Params and multiply-adds from the spec alone (no tensors), per layer, per stage and in
//! total, at any input size.

use serde::Serialize;

use crate::error::{Result, ZooError};
use crate::layout::{self, Layer};
use crate::spec::{BlockKind, NetSpec, Stem};

#[derive(Debug, Clone, Serialize)]
pub struct LayerComplexity {
    pub name: String,
    pub params: u64,
    pub macs: u64,
    pub output_size: usize,
}

/// One row of the paper's Table 1: a stage with its output size and block template.
#[derive(Debug, Clone, Serialize)]
pub struct StageComplexity {
    /// The paper's stage name: conv1 (stem), conv2..conv5, fc.
    pub stage: String,
    pub output_size: usize,
    /// The layers of one block, e.g. "[1x1, 128; 3x3, 128, C=32; 1x1, 256] x3".
    pub structure: String,
    pub params: u64,
    pub macs: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Complexity {
    pub params: u64,
    pub macs: u64,
    pub input_size: usize,
    pub stages: Vec<StageComplexity>,
    pub layers: Vec<LayerComplexity>,
}

/// The paper's stage of a layer name: `conv1`/`bn1` are the stem (conv1), `layerN.*` is
/// conv(N+1), `fc` the classifier.
fn stage_of(layer: &Layer) -> String {
    match layer.name.strip_prefix("layer") {
        Some(rest) => {
            let n: usize = rest
                .split('.')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            format!("conv{}", n + 1)
        }
        None if layer.name == "fc" => "fc".to_string(),
        None => "conv1".to_string(),
    }
}

fn stage_structure(spec: &NetSpec, stage: usize) -> String {
    let d = spec.path_width(stage);
    let width = d * spec.cardinality;
    let out = spec.stage_out_channels(stage);
    let blocks = spec.stages[stage].blocks;
    let group = if spec.cardinality > 1 {
        format!(", C={}", spec.cardinality)
    } else {
        String::new()
    };
    match spec.block {
        BlockKind::Bottleneck => {
            format!("[1x1, {width}; 3x3, {width}{group}; 1x1, {out}] x{blocks}")
        }
        BlockKind::Basic => format!("[3x3, {width}{group}; 3x3, {out}] x{blocks}"),
    }
}

fn stem_structure(spec: &NetSpec) -> String {
    match spec.stem {
        Stem::Imagenet { channels } => format!("7x7, {channels}, stride 2"),
        Stem::Cifar { channels, stride } => format!("3x3, {channels}, stride {stride}"),
    }
}

impl Complexity {
    pub fn of(spec: &NetSpec) -> Result<Complexity> {
        spec.validate()?;
        let layers = layout::layers(spec);
        // Exact counts or an error: a spec within validate's bounds can still describe more
        // multiply-adds than 64 bits hold (a very wide net at a very large input).
        let overflow = || {
            ZooError::InvalidSpec {
            field: "input_size".into(),
            reason: format!(
                "the network's parameter or multiply-add count at input size {} does not fit in 64 bits",
                spec.input_size
            ),
        }
        };
        let total = |count: fn(&Layer) -> Option<u64>| -> Result<u64> {
            layers
                .iter()
                .try_fold(0u64, |acc, l| acc.checked_add(count(l)?))
                .ok_or_else(overflow)
        };
        let (params, macs) = (total(Layer::checked_params)?, total(Layer::checked_macs)?);
        let mut stages: Vec<StageComplexity> = Vec::new();
        for layer in &layers {
            let stage = stage_of(layer);
            if stages.last().map(|s| s.stage != stage).unwrap_or(true) {
                let structure = match stage.as_str() {
                    "conv1" => stem_structure(spec),
                    "fc" => format!("global average pool, {}-d fc, softmax", spec.classes),
                    other => {
                        let index: usize = other[4..].parse().unwrap_or(2);
                        stage_structure(spec, index - 2)
                    }
                };
                stages.push(StageComplexity {
                    stage,
                    output_size: 0,
                    structure,
                    params: 0,
                    macs: 0,
                });
            }
            let current = stages.last_mut().expect("pushed above");
            current.params += layer.params();
            current.macs += layer.macs();
            current.output_size = layer.output_size;
        }
        // The paper lists the max-pool under conv2, whose output it shapes.
        if let (Stem::Imagenet { .. }, Some(conv2)) = (&spec.stem, stages.get_mut(1)) {
            conv2.structure = format!("3x3 max pool, stride 2; {}", conv2.structure);
        }
        Ok(Complexity {
            params,
            macs,
            input_size: spec.input_size,
            stages,
            layers: layers
                .iter()
                .map(|l| LayerComplexity {
                    name: l.name.clone(),
                    params: l.params(),
                    macs: l.macs(),
                    output_size: l.output_size,
                })
                .collect(),
        })
    }
}
