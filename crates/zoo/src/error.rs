use thiserror::Error;

#[derive(Debug, Error)]
pub enum ZooError {
    #[error("unknown model '{name}'{}", suggestion_text(.suggestions))]
    UnknownPreset {
        name: String,
        suggestions: Vec<String>,
    },
    #[error("invalid model spec: `{field}`: {reason}")]
    InvalidSpec { field: String, reason: String },
    #[error("{file}: missing weight `{key}` (expected shape {expected:?}); nothing was loaded")]
    MissingWeight {
        file: String,
        key: String,
        expected: Vec<usize>,
    },
    #[error("{file}: unexpected weight `{key}` with shape {shape:?}, which model `{model}` does not have; nothing was loaded")]
    UnexpectedWeight {
        file: String,
        key: String,
        shape: Vec<usize>,
        model: String,
    },
    #[error("{file}: weight `{key}` has shape {found:?} but the model expects {expected:?}; nothing was loaded")]
    ShapeMismatch {
        file: String,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{file}: weight `{key}` has dtype {dtype}; only f32, f16, bf16 and f64 weights load")]
    UnsupportedDtype {
        file: String,
        key: String,
        dtype: String,
    },
    #[error("input has {found} channels but the model expects {expected} (input shape {shape:?}, expected [N, {expected}, H, W])")]
    InputChannels {
        expected: usize,
        found: usize,
        shape: Vec<usize>,
    },
    #[error("input must be a non-empty 4-d tensor [N, C, H, W], got shape {shape:?}")]
    InputRank { shape: Vec<usize> },
    #[error("{file}: {cause}")]
    File {
        file: String,
        cause: candle_core::Error,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

fn suggestion_text(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        " (run `cardinal models` for the list)".to_string()
    } else {
        format!(
            "; did you mean {}? (`cardinal models` lists them all)",
            suggestions
                .iter()
                .map(|s| format!("'{s}'"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

pub type Result<T, E = ZooError> = std::result::Result<T, E>;
