//! A torchvision state dict, saved by PyTorch as safetensors, loads without renaming and
//! gives torchvision's logits (fixture made by fixtures/make_torchvision_fixture.py).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use cardinal_zoo::spec::BlockForm;
use cardinal_zoo::{load_safetensors, save_safetensors, NetSpec, ResNet, ZooError};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn tiny_spec() -> NetSpec {
    let text = std::fs::read_to_string(fixture("resnext_tiny.yaml")).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

/// The fixture's f16 weights, loaded as f32 for `spec`.
fn f16_state(spec: &NetSpec) -> cardinal_zoo::StateDict {
    load_safetensors(
        &fixture("resnext_tiny_f16.safetensors"),
        spec,
        "t",
        &Device::Cpu,
    )
    .unwrap()
}

fn io() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("io.safetensors"), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn logits_for(weights: &Path, spec: &NetSpec) -> Tensor {
    let state = load_safetensors(weights, spec, "resnext_tiny", &Device::Cpu).unwrap();
    let model = ResNet::new(spec, &state).unwrap();
    model.forward_t(&io()["input"], false).unwrap()
}

#[test]
fn f16_and_bf16_torchvision_weights_give_torchvision_logits() {
    let spec = tiny_spec();
    for (file, key) in [
        ("resnext_tiny_f16.safetensors", "logits_f16"),
        ("resnext_tiny_bf16.safetensors", "logits_bf16"),
    ] {
        let logits = logits_for(&fixture(file), &spec);
        let diff = max_abs_diff(&logits, &io()[key]);
        assert!(diff <= 1e-4, "{file}: max |diff| {diff}");
    }
}

#[test]
fn f32_weights_load_in_every_block_form() {
    let spec = tiny_spec();
    // An f32 file made from the f16 one holds the same values, so the f16 logits apply.
    let state = f16_state(&spec);
    let dir = tempfile::tempdir().unwrap();
    let f32_file = dir.path().join("resnext_tiny_f32.safetensors");
    save_safetensors(&f32_file, &spec, &state).unwrap();
    for form in BlockForm::ALL {
        let spec_f = NetSpec {
            form,
            ..spec.clone()
        };
        let logits = logits_for(&f32_file, &spec_f);
        let diff = max_abs_diff(&logits, &io()["logits_f16"]);
        assert!(diff <= 1e-4, "form {form}: max |diff| {diff}");
    }
}

/// Writes the fixture's weights, edited by `edit`, to a temporary file.
fn edited_weights(edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> (tempfile::TempDir, PathBuf) {
    let mut tensors =
        candle_core::safetensors::load(fixture("resnext_tiny_f16.safetensors"), &Device::Cpu)
            .unwrap();
    edit(&mut tensors);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edited.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    (dir, path)
}

fn load_error(path: &Path) -> ZooError {
    load_safetensors(path, &tiny_spec(), "resnext_tiny", &Device::Cpu).unwrap_err()
}

#[test]
fn a_missing_key_is_named_with_its_shape() {
    let (_dir, path) = edited_weights(|t| {
        t.remove("layer2.0.conv2.weight");
    });
    let msg = load_error(&path).to_string();
    assert!(
        msg.contains("missing weight `layer2.0.conv2.weight`"),
        "{msg}"
    );
    assert!(msg.contains("[32, 8, 3, 3]"), "{msg}");
    assert!(msg.contains("edited.safetensors"), "{msg}");
}

#[test]
fn an_extra_key_is_named() {
    let (_dir, path) = edited_weights(|t| {
        t.insert(
            "head.weight".into(),
            Tensor::zeros((3, 3), DType::F16, &Device::Cpu).unwrap(),
        );
    });
    let msg = load_error(&path).to_string();
    assert!(msg.contains("unexpected weight `head.weight`"), "{msg}");
}

#[test]
fn a_wrong_shape_names_the_key_and_both_shapes() {
    let (_dir, path) = edited_weights(|t| {
        t.insert(
            "fc.weight".into(),
            Tensor::zeros((1000, 2048), DType::F16, &Device::Cpu).unwrap(),
        );
    });
    let msg = load_error(&path).to_string();
    assert!(msg.contains("`fc.weight`"), "{msg}");
    assert!(
        msg.contains("[1000, 2048]") && msg.contains("[10, 2048]"),
        "{msg}"
    );
}

#[test]
fn an_integer_weight_is_refused() {
    let (_dir, path) = edited_weights(|t| {
        t.insert(
            "fc.bias".into(),
            Tensor::zeros(10, DType::I64, &Device::Cpu).unwrap(),
        );
    });
    let msg = load_error(&path).to_string();
    assert!(msg.contains("`fc.bias` has dtype I64"), "{msg}");
}

#[test]
fn a_file_that_is_not_safetensors_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.safetensors");
    std::fs::write(&path, b"not a safetensors file").unwrap();
    let msg = load_error(&path).to_string();
    assert!(msg.contains("garbage.safetensors"), "{msg}");
}

#[test]
fn an_input_with_the_wrong_channel_count_says_what_was_expected() {
    let spec = tiny_spec();
    let state = f16_state(&spec);
    let model = ResNet::new(&spec, &state).unwrap();
    let gray = Tensor::zeros((2, 1, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let msg = model.forward_t(&gray, false).unwrap_err().to_string();
    assert!(msg.contains("1 channels but the model expects 3"), "{msg}");
}

/// What `cardinal export` writes (save_safetensors from any block form) has exactly the
/// names, shapes and dtype of torchvision's own state dict for the architecture, as PyTorch
/// listed them when it made the fixture (keys.txt), less `num_batches_tracked`, which
/// `load_state_dict` fills in for BatchNorm when it is absent.
#[test]
fn saved_weights_have_torchvisions_names_and_shapes_from_every_form() {
    let spec = tiny_spec();
    let listed: std::collections::BTreeMap<String, String> =
        std::fs::read_to_string(fixture("keys.txt"))
            .unwrap()
            .lines()
            .filter(|l| !l.contains("num_batches_tracked"))
            .map(|l| {
                let (key, rest) = l.split_once(' ').unwrap();
                (key.to_string(), rest.to_string())
            })
            .collect();
    let state = f16_state(&spec);
    for form in BlockForm::ALL {
        let spec_f = NetSpec {
            form,
            ..spec.clone()
        };
        let state_f = cardinal_zoo::convert::convert(&spec, &state, BlockForm::C, form).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("export.safetensors");
        save_safetensors(&file, &spec_f, &state_f).unwrap();
        let saved = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
        let written: std::collections::BTreeMap<String, String> = saved
            .iter()
            .map(|(k, t)| {
                assert_eq!(t.dtype(), DType::F32, "{k}");
                (k.clone(), format!("{:?} float32", t.dims()))
            })
            .collect();
        assert_eq!(written, listed, "form {form}");
    }
}
