//! The checkpoint of a run: weights, BN statistics, momentum buffers, the epoch count and
//! the metrics so far, in one safetensors file written atomically after every epoch.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use candle_core::{Device, Tensor};

use crate::files::write_atomic;
use crate::MetricRow;

pub(crate) struct Checkpoint {
    pub(crate) epochs_done: usize,
    pub(crate) state: BTreeMap<String, Tensor>,
    pub(crate) momentum: BTreeMap<String, Tensor>,
    pub(crate) rows: Vec<MetricRow>,
}

pub(crate) fn save_checkpoint(dir: &Path, checkpoint: &Checkpoint) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    // Checkpoints hold CPU tensors whatever device trained, so any device can resume them.
    for (k, t) in &checkpoint.state {
        tensors.push((
            format!("model/{k}"),
            t.to_device(&Device::Cpu)?.contiguous()?,
        ));
    }
    for (k, t) in &checkpoint.momentum {
        tensors.push((
            format!("momentum/{k}"),
            t.to_device(&Device::Cpu)?.contiguous()?,
        ));
    }
    let metadata = HashMap::from([
        (
            "epochs_done".to_string(),
            checkpoint.epochs_done.to_string(),
        ),
        ("rows".to_string(), serde_json::to_string(&checkpoint.rows)?),
        (
            "rng".to_string(),
            "every draw is a function of (seed, epoch, sample index); the seed is in config.yaml"
                .to_string(),
        ),
    ]);
    let bytes =
        safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), t)), Some(metadata))
            .map_err(|e| anyhow!("serializing the checkpoint: {e}"))?;
    write_atomic(&dir.join("checkpoint.safetensors"), &bytes)
}

pub(crate) fn load_checkpoint_on(path: &Path, device: &Device) -> Result<Checkpoint> {
    let mut c = load_checkpoint(path)?;
    let move_all = |m: BTreeMap<String, Tensor>| -> Result<BTreeMap<String, Tensor>> {
        m.into_iter()
            .map(|(k, t)| Ok((k, t.to_device(device)?)))
            .collect()
    };
    c.state = move_all(c.state)?;
    c.momentum = move_all(c.momentum)?;
    Ok(c)
}

pub(crate) fn load_checkpoint(path: &Path) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow!("{}: damaged checkpoint ({e})", path.display()))?;
    let info = metadata
        .metadata()
        .clone()
        .ok_or_else(|| anyhow!("{}: checkpoint has no metadata", path.display()))?;
    let epochs_done: usize = info
        .get("epochs_done")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("{}: checkpoint lacks epochs_done", path.display()))?;
    let rows: Vec<MetricRow> = serde_json::from_str(
        info.get("rows")
            .ok_or_else(|| anyhow!("{}: checkpoint lacks rows", path.display()))?,
    )?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
    let mut state = BTreeMap::new();
    let mut momentum = BTreeMap::new();
    for (k, t) in tensors {
        if let Some(name) = k.strip_prefix("model/") {
            state.insert(name.to_string(), t);
        } else if let Some(name) = k.strip_prefix("momentum/") {
            momentum.insert(name.to_string(), t);
        }
    }
    Ok(Checkpoint {
        epochs_done,
        state,
        momentum,
        rows,
    })
}
