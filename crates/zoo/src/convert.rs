//! Converts weights (or gradients, which share their names) between the block forms.
//!
//! The forms differ only in how the aggregated layers are stored: form C keeps one grouped
//! tensor, forms A and B keep one slice per path. Converting is therefore slicing along the
//! path axis (C -> A/B) or concatenating the slices back (A/B -> C); every other tensor is
//! shared as is.

use candle_core::Tensor;

use crate::error::{Result, ZooError};
use crate::layout::block_prefix;
use crate::spec::{BlockForm, BlockKind, NetSpec};
use crate::StateDict;

/// One grouped tensor of form C and where its per-path slices live in another form.
struct SplitRule {
    /// Name inside the block in form C, e.g. `conv2.weight`.
    grouped: String,
    /// Name of path `{k}`'s slice, e.g. `conv2.{k}.weight`.
    per_path: String,
    /// Axis along which paths are stacked: 0 for output channels, 1 for input channels.
    axis: usize,
}

fn rule(grouped: &str, per_path: &str, axis: usize) -> SplitRule {
    SplitRule {
        grouped: grouped.to_string(),
        per_path: per_path.to_string(),
        axis,
    }
}

const BN_FIELDS: [&str; 4] = ["weight", "bias", "running_mean", "running_var"];

/// BN is per channel, so a BN over the concatenated paths is the per-path BNs side by side.
fn bn_rules(grouped_bn: &str, path_bn: &str) -> Vec<SplitRule> {
    BN_FIELDS
        .iter()
        .map(|field| {
            rule(
                &format!("{grouped_bn}.{field}"),
                &format!("{path_bn}.{field}"),
                0,
            )
        })
        .collect()
}

fn rules(kind: BlockKind, form: BlockForm) -> Vec<SplitRule> {
    match (kind, form) {
        (_, BlockForm::C) | (BlockKind::Basic, BlockForm::B) => Vec::new(),
        (BlockKind::Bottleneck, BlockForm::B) => vec![rule("conv2.weight", "conv2.{k}.weight", 0)],
        (BlockKind::Bottleneck, BlockForm::A) => {
            let mut r = vec![rule("conv1.weight", "paths.{k}.conv1.weight", 0)];
            r.extend(bn_rules("bn1", "paths.{k}.bn1"));
            r.push(rule("conv2.weight", "paths.{k}.conv2.weight", 0));
            r.extend(bn_rules("bn2", "paths.{k}.bn2"));
            r.push(rule("conv3.weight", "paths.{k}.conv3.weight", 1));
            r
        }
        (BlockKind::Basic, BlockForm::A) => {
            let mut r = vec![rule("conv1.weight", "paths.{k}.conv1.weight", 0)];
            r.extend(bn_rules("bn1", "paths.{k}.bn1"));
            r.push(rule("conv2.weight", "paths.{k}.conv2.weight", 1));
            r
        }
    }
}

fn take(state: &mut StateDict, name: &str) -> Result<Tensor> {
    state.remove(name).ok_or_else(|| ZooError::InvalidSpec {
        field: "form".into(),
        reason: format!("cannot convert: tensor `{name}` is missing"),
    })
}

/// Converts `state`, laid out in form `from` for `spec`'s shapes, to form `to`.
/// Tensors the spec does not know pass through; tensors the state lacks (running statistics
/// in a set of gradients) are skipped.
pub fn convert(
    spec: &NetSpec,
    state: &StateDict,
    from: BlockForm,
    to: BlockForm,
) -> Result<StateDict> {
    let mut out = state.clone();
    if from == to {
        return Ok(out);
    }
    for (s, stage) in spec.block_shapes().iter().enumerate() {
        for (b, shape) in stage.iter().enumerate() {
            let prefix = block_prefix(s, b);
            let paths = shape.cardinality;
            // from -> C: concatenate the slices.
            for r in rules(spec.block, from) {
                let first = format!("{prefix}.{}", r.per_path.replace("{k}", "0"));
                if !out.contains_key(&first) {
                    // A partial state (gradients have no running statistics) converts what it has.
                    continue;
                }
                let slices = (0..paths)
                    .map(|k| {
                        take(
                            &mut out,
                            &format!("{prefix}.{}", r.per_path.replace("{k}", &k.to_string())),
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                out.insert(
                    format!("{prefix}.{}", r.grouped),
                    Tensor::cat(&slices, r.axis)?,
                );
            }
            // C -> to: slice per path.
            for r in rules(spec.block, to) {
                let Some(grouped) = out.remove(&format!("{prefix}.{}", r.grouped)) else {
                    continue;
                };
                let width = grouped.dim(r.axis)? / paths;
                for k in 0..paths {
                    let name = format!("{prefix}.{}", r.per_path.replace("{k}", &k.to_string()));
                    out.insert(
                        name,
                        grouped.narrow(r.axis, k * width, width)?.contiguous()?,
                    );
                }
            }
        }
    }
    Ok(out)
}
