//! Experiments as YAML: a question, a dataset, a model, a recipe, a sweep, seeds and named
//! presets; dotted `key=value` overrides on top. An experiment expands into cells, each one
//! fully resolved run.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use cardinal_data::DataConfig;
use cardinal_zoo::{preserve_complexity, BlockForm, Complexity, NetSpec};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::TrainConfig;
use crate::run_spec::RunSpec;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// The question the experiment answers, in a sentence (it heads the report).
    pub question: String,
    pub dataset: DataConfig,
    /// `preset:` a model preset (see `cardinal models`), then any NetSpec field to override.
    pub model: Map<String, Value>,
    pub train: TrainConfig,
    #[serde(default)]
    pub sweep: Sweep,
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Named sets of dotted overrides, e.g. `quick: {train.epochs: 1}`.
    #[serde(default)]
    pub presets: BTreeMap<String, BTreeMap<String, Value>>,
    /// The preset used when none is named (`--preset`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_preset: Option<String>,
    /// The half-width, in percentage points, that the 95% intervals of the report's paired
    /// differences should reach: the report says how many seeds that takes at the spread it
    /// measured, so the seeds of a long preset can be sized from a first few. (Serialized
    /// even when unset, so that an override or a preset can set it.)
    #[serde(default)]
    pub target_half_width: Option<f64>,
    /// The text of the file this was read from, to name the line of a bad value.
    #[serde(skip)]
    source: Option<std::sync::Arc<str>>,
}

/// The 1-based line of a dotted key (`train.lr`; an index such as `seeds[0]` counts as its
/// list) in block-style YAML: each part is looked for among the lines indented deeper than
/// its parent's, up to the end of the parent's block.
fn line_of(text: &str, dotted: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let (mut start, mut end, mut parent_indent) = (0usize, lines.len(), None::<usize>);
    let mut found = None;
    for part in dotted.split('.') {
        let part = part.split('[').next().unwrap_or(part);
        let at = (start..end).find(|&i| {
            let line = lines[i];
            let trimmed = line.trim_start().trim_start_matches("- ");
            parent_indent.is_none_or(|p| indent(line) > p)
                && (trimmed.starts_with(&format!("{part}:"))
                    || trimmed.starts_with(&format!("\"{part}\":")))
        })?;
        let own = indent(lines[at]);
        let block_end = (at + 1..end)
            .find(|&i| !lines[i].trim().is_empty() && indent(lines[i]) <= own)
            .unwrap_or(end);
        (start, end, parent_indent, found) = (at + 1, block_end, Some(own), Some(at + 1));
    }
    found
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cardinality: Option<CardinalitySweep>,
    /// Any other dotted key and its values, e.g. `model.form: [A, B, C]`; cells are the
    /// Cartesian product.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub grid: BTreeMap<String, Vec<Value>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardinalitySweep {
    pub values: Vec<usize>,
    /// Solve the bottleneck width d that keeps the template block's complexity (Table 2).
    #[serde(default = "yes")]
    pub preserve_complexity: bool,
    /// Stage whose block is matched: 1 is the first residual stage (the paper's conv2).
    #[serde(default = "one")]
    pub stage: usize,
}

fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}

/// Reads an experiment file; errors name the file, line and key.
pub fn load(path: &Path) -> Result<Experiment> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read experiment {}", path.display()))?;
    let mut experiment = parse(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    experiment.train.validate().map_err(|e| {
        let line = line_of(&text, &e.key).map_or(String::new(), |l| format!(", line {l}"));
        anyhow!("{}{line}: {e}", path.display())
    })?;
    experiment.source = Some(text.into());
    Ok(experiment)
}

pub fn parse(text: &str) -> Result<Experiment> {
    let experiment: Experiment = serde_saphyr::from_str(text).map_err(|e| anyhow!("{e}"))?;
    Ok(experiment)
}

/// Parses the value of a command-line override as YAML (`10`, `0.1`, `true`, `[1, 2]`,
/// `cosine`).
pub fn parse_value(text: &str) -> Result<Value> {
    if text.trim().is_empty() {
        return Ok(Value::String(String::new()));
    }
    serde_saphyr::from_str::<Value>(text).map_err(|e| anyhow!("value `{text}`: {e}"))
}

/// Splits `key=value` arguments. A number that is not finite (`.nan`, `.inf`) is refused
/// here, naming the key: the resolved tree cannot hold it.
pub fn parse_overrides(args: &[String]) -> Result<Vec<(String, Value)>> {
    args.iter()
        .map(|arg| {
            let (key, value) = arg.split_once('=').ok_or_else(|| {
                anyhow!("override `{arg}` is not key=value (e.g. train.epochs=3)")
            })?;
            let key = key.trim();
            if let Ok(number) = serde_saphyr::from_str::<f64>(value) {
                if !number.is_finite() {
                    bail!("override `{arg}`: `{key}` must be a finite number, not {number}");
                }
            }
            let value = parse_value(value).map_err(|e| anyhow!("override `{arg}`: {e}"))?;
            Ok((key.to_string(), value))
        })
        .collect()
}

/// Where a key of a resolved experiment got its value.
enum Origin<'a> {
    Preset(&'a str, &'a str, &'a Value),
    Override(&'a str, &'a Value),
}

/// Sets a dotted key in a value tree. Keys must exist, except inside maps that are open by
/// design (`model.*`, `presets.*`, `sweep.grid.*`), so that a typo is an error that suggests
/// the key it resembles.
fn set_dotted(root: &mut Value, key: &str, value: Value) -> Result<()> {
    let parts: Vec<&str> = key.split('.').collect();
    let open = |path: &[&str]| matches!(path, ["model"] | ["presets", ..] | ["sweep", ..]);
    let mut node = root;
    for (i, part) in parts.iter().enumerate() {
        let object = node
            .as_object_mut()
            .ok_or_else(|| anyhow!("`{key}`: `{}` is not a section", parts[..i].join(".")))?;
        let last = i == parts.len() - 1;
        if !object.contains_key(*part) && !open(&parts[..i]) {
            let close: Vec<String> = object
                .keys()
                .filter(|k| strsim::jaro_winkler(k, part) > 0.8)
                .map(|k| {
                    format!(
                        "{}{k}",
                        parts[..i]
                            .iter()
                            .map(|p| format!("{p}."))
                            .collect::<String>()
                    )
                })
                .collect();
            bail!(
                "unknown key `{key}`{}",
                if close.is_empty() {
                    format!(
                        "; `{}` has: {}",
                        parts[..i].join("."),
                        object.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                } else {
                    format!(" (did you mean `{}`?)", close.join("`, `"))
                }
            );
        }
        if last {
            object.insert(part.to_string(), value);
            return Ok(());
        }
        node = object
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    unreachable!("split yields at least one part")
}

impl Experiment {
    /// Applies a named preset (or the default one), then command-line overrides.
    pub fn resolve(
        &self,
        preset: Option<&str>,
        overrides: &[(String, Value)],
    ) -> Result<(Experiment, Option<String>)> {
        let preset = preset
            .map(String::from)
            .or_else(|| self.default_preset.clone());
        let mut tree = serde_json::to_value(self)?;
        let mut origins: Vec<(&str, Origin)> = Vec::new();
        if let Some(name) = &preset {
            let sets = self.presets.get(name).ok_or_else(|| {
                anyhow!(
                    "unknown preset `{name}`; this experiment has: {}",
                    self.presets.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
            for (key, value) in sets {
                set_dotted(&mut tree, key, value.clone())
                    .with_context(|| format!("preset `{name}`"))?;
                origins.push((key, Origin::Preset(name, key, value)));
            }
        }
        for (key, value) in overrides {
            set_dotted(&mut tree, key, value.clone())?;
            origins.push((key, Origin::Override(key, value)));
        }
        // Which key holds a bad value, and where it was set: the last override or preset
        // entry that covers it, else the experiment file (with its line).
        let origin_of = |key: &str| -> String {
            let covers = |set: &str| {
                key == set
                    || key.starts_with(&format!("{set}."))
                    || key.starts_with(&format!("{set}["))
            };
            match origins.iter().rev().find(|(set, _)| covers(set)) {
                Some((_, Origin::Override(k, v))) => format!("set by the override `{k}={v}`"),
                Some((_, Origin::Preset(p, k, v))) => format!("set by preset `{p}`: `{k}: {v}`"),
                None => self
                    .source
                    .as_ref()
                    .and_then(|text| line_of(text, key))
                    .map_or("in the experiment file".into(), |line| {
                        format!("line {line}")
                    }),
            }
        };
        let mut resolved: Experiment = serde_path_to_error::deserialize(tree).map_err(|e| {
            let key = e.path().to_string();
            anyhow!("`{key}` ({}): {}", origin_of(&key), e.inner())
        })?;
        resolved.source = self.source.clone();
        resolved
            .train
            .validate()
            .map_err(|e| anyhow!("{e} ({})", origin_of(&e.key)))?;
        if resolved.seeds.is_empty() {
            bail!("`seeds`: give at least one seed ({})", origin_of("seeds"));
        }
        if let Some(w) = resolved.target_half_width {
            if !(w.is_finite() && w > 0.0) {
                bail!(
                    "`target_half_width`: give a positive number of percentage points, not {w} ({})",
                    origin_of("target_half_width")
                );
            }
        }
        Ok((resolved, preset))
    }

    /// The model spec before the sweep: the preset with the listed fields overridden.
    pub fn base_spec(&self) -> Result<(String, NetSpec)> {
        let preset = self
            .model
            .get("preset")
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                anyhow!("`model.preset`: name a model preset (see `cardinal models`)")
            })?;
        let spec = cardinal_zoo::preset(preset).map_err(|e| anyhow!("`model.preset`: {e}"))?;
        let mut tree = serde_json::to_value(&spec)?;
        for (key, value) in self.model.iter().filter(|(k, _)| *k != "preset") {
            let object = tree.as_object_mut().expect("a spec is an object");
            if !object.contains_key(key) {
                bail!(
                    "`model.{key}` is not a model spec field; fields: {}",
                    object.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            object.insert(key.clone(), value.clone());
        }
        let spec: NetSpec = serde_json::from_value(tree).map_err(|e| anyhow!("`model`: {e}"))?;
        spec.validate().map_err(|e| anyhow!("`model`: {e}"))?;
        Ok((preset.to_string(), spec))
    }

    /// Every cell of the sweep, for every seed, fully resolved; seed by seed (every
    /// configuration of the first seed, then of the next), so a sweep stopped part way holds
    /// whole seeds: paired comparisons need every configuration of a seed.
    pub fn cells(&self, name: &str) -> Result<Vec<RunSpec>> {
        let grid: Vec<(String, Vec<Value>)> = self.sweep.grid.clone().into_iter().collect();
        let mut combos: Vec<Vec<(String, Value)>> = vec![vec![]];
        for (key, values) in &grid {
            if values.is_empty() {
                bail!("`sweep.grid.{key}` has no values");
            }
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push((key.clone(), v.clone()));
                        c
                    })
                })
                .collect();
        }
        let cardinalities: Vec<Option<usize>> = match &self.sweep.cardinality {
            Some(c) if c.values.is_empty() => bail!("`sweep.cardinality.values` is empty"),
            Some(c) => c.values.iter().map(|&v| Some(v)).collect(),
            None => vec![None],
        };
        // (the seed's position in its seed list, the cell), sorted stably at the end.
        let mut cells: Vec<(usize, RunSpec)> = Vec::new();
        for cardinality in &cardinalities {
            for combo in &combos {
                let mut tree = serde_json::to_value(self)?;
                for (key, value) in combo {
                    set_dotted(&mut tree, key, value.clone())
                        .with_context(|| format!("`sweep.grid.{key}`"))?;
                }
                let variant: Experiment = serde_json::from_value(tree)
                    .map_err(|e| anyhow!("sweep cell {combo:?}: {e}"))?;
                variant.train.validate()?;
                let (preset, mut spec) = variant.base_spec()?;
                let template = model_label(&preset, &spec);
                let mut model = template.clone();
                if let (Some(c), Some(sweep)) = (cardinality, &self.sweep.cardinality) {
                    if sweep.preserve_complexity {
                        if sweep.stage == 0 {
                            bail!("`sweep.cardinality.stage`: stages count from 1");
                        }
                        let solved = preserve_complexity(&spec, sweep.stage - 1, &[*c])
                            .map_err(|e| anyhow!("`sweep.cardinality`: {e}"))?;
                        spec.bottleneck_width = solved[0].bottleneck_width;
                    }
                    spec.cardinality = *c;
                    spec.validate()
                        .map_err(|e| anyhow!("`sweep.cardinality` = {c}: {e}"))?;
                    model = match cardinal_zoo::preset_named_for(&spec) {
                        Some(name) => name.to_string(),
                        None => format!("{template}@{c}x{}d", spec.bottleneck_width),
                    };
                }
                let complexity = Complexity::of(&spec)?;
                let mut labels: BTreeMap<String, String> = combo
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str()
                                .map(String::from)
                                .unwrap_or_else(|| v.to_string()),
                        )
                    })
                    .collect();
                labels.insert("cardinality".into(), spec.cardinality.to_string());
                labels.insert("bottleneck_width".into(), spec.bottleneck_width.to_string());
                for (position, &seed) in variant.seeds.iter().enumerate() {
                    cells.push((
                        position,
                        RunSpec {
                            experiment: name.to_string(),
                            model: model.clone(),
                            spec: spec.clone(),
                            dataset: variant.dataset.clone(),
                            train: variant.train.clone(),
                            seed,
                            labels: labels.clone(),
                            params: complexity.params,
                            macs: complexity.macs,
                        },
                    ));
                }
            }
        }
        cells.sort_by_key(|(position, _)| *position);
        Ok(cells.into_iter().map(|(_, cell)| cell).collect())
    }
}

/// A name that says which network trains: the preset whose spec it is exactly, else the
/// named preset with what the experiment changed, e.g. `cpu_resnet11 (blocks 2/1/1)`.
pub fn model_label(preset: &str, spec: &NetSpec) -> String {
    if let Some(name) = cardinal_zoo::preset_named_for(spec) {
        return name.to_string();
    }
    let Ok(base) = cardinal_zoo::preset(preset) else {
        return format!("{} {}-layer {}", preset, spec.depth(), spec.template());
    };
    let mut changes = Vec::new();
    let blocks = |s: &NetSpec| {
        s.stages
            .iter()
            .map(|st| st.blocks.to_string())
            .collect::<Vec<_>>()
            .join("/")
    };
    let planes = |s: &NetSpec| {
        s.stages
            .iter()
            .map(|st| format!("{}:{}", st.planes, st.stride))
            .collect::<Vec<_>>()
            .join("/")
    };
    if blocks(&base) != blocks(spec) {
        changes.push(format!("blocks {}", blocks(spec)));
    }
    if planes(&base) != planes(spec) {
        changes.push(format!("planes:stride {}", planes(spec)));
    }
    if (base.cardinality, base.bottleneck_width) != (spec.cardinality, spec.bottleneck_width) {
        changes.push(spec.template());
    }
    if base.input_size != spec.input_size {
        changes.push(format!("input {}", spec.input_size));
    }
    if base.in_channels != spec.in_channels {
        changes.push(format!("{} input channels", spec.in_channels));
    }
    if base.classes != spec.classes {
        changes.push(format!("{} classes", spec.classes));
    }
    if base.form != spec.form {
        changes.push(format!("form {}", spec.form));
    }
    let known = changes.len();
    let (mut a, mut b) = (base.clone(), spec.clone());
    for s in [&mut a, &mut b] {
        s.stages.clear();
        (s.cardinality, s.bottleneck_width, s.input_size) = (0, 0, 0);
        (s.in_channels, s.classes, s.form) = (0, 0, BlockForm::C);
    }
    if a != b || (known == 0 && base != *spec) {
        changes.push("edited".into());
    }
    format!("{preset} ({})", changes.join(", "))
}

#[cfg(test)]
mod label_tests {
    use super::model_label;
    use cardinal_zoo::preset;

    #[test]
    fn labels_name_the_network_that_trains() {
        let mut spec = preset("cpu_resnet11").unwrap();
        assert_eq!(model_label("cpu_resnet11", &spec), "cpu_resnet11");
        // The grid's template is its own preset, whatever it was written from.
        for (stage, blocks) in spec.stages.iter_mut().zip([2, 1, 1]) {
            stage.blocks = blocks;
        }
        assert_eq!(model_label("cpu_resnet11", &spec), "cpu_resnet14");
        spec.input_size = 16;
        assert_eq!(
            model_label("cpu_resnet11", &spec),
            "cpu_resnet11 (blocks 2/1/1, input 16)"
        );
        spec.zero_init_last_bn = true;
        assert_eq!(
            model_label("cpu_resnet11", &spec),
            "cpu_resnet11 (blocks 2/1/1, input 16, edited)"
        );
    }
}
