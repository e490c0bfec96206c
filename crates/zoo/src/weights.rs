//! Weight files: torchvision state dicts saved as safetensors load without renaming.
//!
//! Files are always in form C (torchvision's layout and names); a model in form A or B is
//! converted on load and converted back on save, so one file serves every form.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::convert;
use crate::error::{Result, ZooError};
use crate::layout;
use crate::spec::{BlockForm, NetSpec};
use crate::StateDict;

/// PyTorch's BN step counter: a buffer torchvision saves that no computation here reads.
const IGNORED_SUFFIX: &str = "num_batches_tracked";

/// Checks `state` (form C) against the spec: every expected tensor present with its shape,
/// nothing extra. The first problem is reported with the key and both shapes.
pub fn check_state(
    spec: &NetSpec,
    state: &BTreeMap<String, Tensor>,
    file: &str,
    model: &str,
) -> Result<()> {
    let grouped = NetSpec {
        form: BlockForm::C,
        ..spec.clone()
    };
    check_tensors(&layout::tensor_shapes(&grouped), state, file, model)
}

/// Checks named tensors against the expected names and shapes, naming the first problem.
pub(crate) fn check_tensors(
    expected: &[(String, Vec<usize>, layout::TensorRole)],
    state: &BTreeMap<String, Tensor>,
    file: &str,
    model: &str,
) -> Result<()> {
    for (key, shape, _) in expected {
        match state.get(key) {
            None => {
                return Err(ZooError::MissingWeight {
                    file: file.into(),
                    key: key.clone(),
                    expected: shape.clone(),
                })
            }
            Some(t) if t.dims() != shape.as_slice() => {
                return Err(ZooError::ShapeMismatch {
                    file: file.into(),
                    key: key.clone(),
                    expected: shape.clone(),
                    found: t.dims().to_vec(),
                })
            }
            Some(_) => {}
        }
    }
    if state.len() != expected.len() {
        let known: std::collections::HashSet<&str> =
            expected.iter().map(|(k, _, _)| k.as_str()).collect();
        if let Some((key, t)) = state.iter().find(|(k, _)| !known.contains(k.as_str())) {
            return Err(ZooError::UnexpectedWeight {
                file: file.into(),
                key: key.clone(),
                shape: t.dims().to_vec(),
                model: model.into(),
            });
        }
    }
    Ok(())
}

/// Loads a safetensors file (f32, f16, bf16 or f64) for `spec`, validates every key and
/// shape before anything is used, and returns the weights as f32 in the spec's form.
pub fn load_safetensors(
    path: &Path,
    spec: &NetSpec,
    model: &str,
    device: &Device,
) -> Result<StateDict> {
    spec.validate()?;
    let file = path.display().to_string();
    let raw = candle_core::safetensors::load(path, device).map_err(|source| ZooError::File {
        file: file.clone(),
        cause: source,
    })?;
    let mut state = BTreeMap::new();
    for (key, tensor) in raw {
        if key.ends_with(IGNORED_SUFFIX) {
            continue;
        }
        let tensor = match tensor.dtype() {
            DType::F32 => tensor,
            DType::F16 | DType::BF16 | DType::F64 => tensor.to_dtype(DType::F32)?,
            other => {
                return Err(ZooError::UnsupportedDtype {
                    file,
                    key,
                    dtype: format!("{other:?}"),
                })
            }
        };
        state.insert(key, tensor);
    }
    check_state(spec, &state, &file, model)?;
    convert::convert(spec, &state, BlockForm::C, spec.form)
}

/// Saves weights (in the spec's form) as a form-C safetensors file that torchvision loads.
pub fn save_safetensors(path: &Path, spec: &NetSpec, state: &StateDict) -> Result<()> {
    let grouped = convert::convert(spec, state, spec.form, BlockForm::C)?;
    let map: std::collections::HashMap<String, Tensor> = grouped.into_iter().collect();
    candle_core::safetensors::save(&map, path).map_err(|source| ZooError::File {
        file: path.display().to_string(),
        cause: source,
    })
}
