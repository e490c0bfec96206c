//! The preserve-complexity solver (paper Table 2): for each cardinality C, the integer path
//! width d whose block has the complexity closest to the template's block.

use serde::Serialize;

use crate::error::{Result, ZooError};
use crate::spec::{BlockKind, NetSpec};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PreservedWidth {
    pub cardinality: usize,
    /// d at the solved stage.
    pub bottleneck_width: usize,
    /// C * d, the width of the grouped 3x3 layer.
    pub group_width: usize,
    /// Conv weights of one block of the stage (a block whose input and output widths are
    /// equal), which is also its multiply-adds per output position.
    pub block_params: u64,
}

/// Conv weights of an identity-shortcut block with `channels` in and out.
pub fn block_params(
    kind: BlockKind,
    channels: usize,
    cardinality: usize,
    path_width: usize,
) -> u64 {
    let (c, d, io) = (cardinality as u64, path_width as u64, channels as u64);
    match kind {
        // C * (io*d + 9*d^2 + d*io): 1x1 reduce, grouped 3x3, 1x1 expand.
        BlockKind::Bottleneck => c * (io * d + 9 * d * d + d * io),
        // C * (9*io*d + 9*d*io): two 3x3 convs per path.
        BlockKind::Basic => c * (9 * io * d + 9 * d * io),
    }
}

/// Solves stage `stage` (0-based: 0 is the paper's conv2) of `template` for each cardinality.
pub fn preserve_complexity(
    template: &NetSpec,
    stage: usize,
    cardinalities: &[usize],
) -> Result<Vec<PreservedWidth>> {
    template.validate()?;
    if stage >= template.stages.len() {
        return Err(ZooError::InvalidSpec {
            field: "stage".into(),
            reason: format!(
                "stage {} does not exist; the model has stages 1..={}",
                stage + 1,
                template.stages.len()
            ),
        });
    }
    let channels = template.stage_out_channels(stage);
    let target = block_params(
        template.block,
        channels,
        template.cardinality,
        template.path_width(stage),
    );
    cardinalities
        .iter()
        .map(|&cardinality| {
            if cardinality == 0 {
                return Err(ZooError::InvalidSpec {
                    field: "cardinality".into(),
                    reason: "must be at least 1".into(),
                });
            }
            // Complexity grows monotonically with d, so scanning up to the first d past the
            // target finds the closest integer.
            let mut best: Option<(u64, usize)> = None;
            let mut d = 1;
            loop {
                let params = block_params(template.block, channels, cardinality, d);
                let gap = params.abs_diff(target);
                if best.map(|(g, _)| gap < g).unwrap_or(true) {
                    best = Some((gap, d));
                }
                if params >= target {
                    break;
                }
                d += 1;
            }
            let d = best.expect("at least one width tried").1;
            Ok(PreservedWidth {
                cardinality,
                bottleneck_width: d,
                group_width: cardinality * d,
                block_params: block_params(template.block, channels, cardinality, d),
            })
        })
        .collect()
}
