//! Turns a MODEL argument into a spec: a preset name, or a YAML/JSON spec file.

use std::path::Path;

use anyhow::{bail, Context, Result};
use cardinal_zoo::NetSpec;

/// A resolved model: its display name and spec.
pub struct ModelArg {
    pub name: String,
    pub spec: NetSpec,
}

pub fn resolve(arg: &str) -> Result<ModelArg> {
    let looks_like_file = [".yaml", ".yml", ".json"]
        .iter()
        .any(|ext| arg.ends_with(ext));
    if !looks_like_file {
        let spec = cardinal_zoo::preset(arg)?;
        return Ok(ModelArg {
            name: arg.to_string(),
            spec,
        });
    }
    let path = Path::new(arg);
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read model spec {arg}"))?;
    let spec: NetSpec = if arg.ends_with(".json") {
        serde_json::from_str(&text).with_context(|| format!("{arg}: not a valid model spec"))?
    } else {
        serde_saphyr::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{arg}: not a valid model spec:\n{e}"))?
    };
    if let Err(e) = spec.validate() {
        bail!("{arg}: {e}");
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| arg.to_string());
    Ok(ModelArg { name, spec })
}
