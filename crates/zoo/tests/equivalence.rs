//! Forms A, B and C are one function; a depth-2 aggregated block is a wider dense block.

use candle_core::DType;
use cardinal_zoo::equivalence::{block_forms, depth2, run_all, RELATIVE_TOLERANCE};
use cardinal_zoo::preset;

fn assert_all_pass(checks: &[cardinal_zoo::equivalence::Check], expected: usize) {
    assert_eq!(checks.len(), expected);
    for c in checks {
        assert!(
            c.passed,
            "{}: {} > {}",
            c.check, c.max_abs_diff, c.tolerance
        );
        assert!(
            c.tolerance <= RELATIVE_TOLERANCE * 1e12,
            "tolerance is relative to a sane scale"
        );
    }
}

#[test]
fn cpu_resnext_forms_agree_in_f32() {
    // The trainer's own precision, on the model family the ablations train.
    let mut spec = preset("cpu_resnext11_4x12d").unwrap();
    spec.input_size = 28;
    assert_all_pass(&run_all(&spec, 7, 4, DType::F32).unwrap(), 16);
}

#[test]
fn resnext50_forms_agree_in_f64() {
    let mut spec = preset("resnext50_32x4d").unwrap();
    spec.input_size = 32;
    assert_all_pass(&block_forms(&spec, 1, 4, DType::F64).unwrap(), 10);
}

#[test]
fn odd_input_sizes_and_the_imagenet_stem_agree() {
    // 37 -> 19 after the 7x7/2 conv -> 10 after the padded max-pool: odd sizes everywhere.
    let mut spec = preset("resnext50_8x14d").unwrap();
    spec.stages.truncate(2);
    spec.input_size = 37;
    spec.classes = 7;
    assert_all_pass(&block_forms(&spec, 2, 3, DType::F32).unwrap(), 10);
}

#[test]
fn fig4_depth2_aggregation_is_a_wider_dense_block() {
    assert_all_pass(&depth2(32, 4, 64, 0, DType::F32).unwrap(), 6);
}

#[test]
fn a_wrong_conversion_is_caught() {
    // The checks must be able to fail: a form-A model given form-C weights of another seed
    // differs from the reference.
    use candle_core::{Device, Tensor};
    use cardinal_zoo::{convert::convert, init_weights, spec::BlockForm, NetSpec, ResNet};
    let spec = preset("cpu_resnext11_4x12d").unwrap();
    let a = NetSpec {
        form: BlockForm::A,
        ..spec.clone()
    };
    let state_c = init_weights(&spec, 0, &Device::Cpu).unwrap();
    let mut state_a = convert(&spec, &state_c, BlockForm::C, BlockForm::A).unwrap();
    // Swap two paths' first convs: still a valid model, but no longer the same function.
    let k0 = "layer1.0.paths.0.conv1.weight".to_string();
    let k1 = "layer1.0.paths.1.conv1.weight".to_string();
    let (w0, w1) = (state_a[&k0].clone(), state_a[&k1].clone());
    state_a.insert(k0, w1);
    state_a.insert(k1, w0);
    let x = Tensor::randn(0f32, 1., (2, 1, 28, 28), &Device::Cpu).unwrap();
    let yc = ResNet::new(&spec, &state_c)
        .unwrap()
        .forward_t(&x, false)
        .unwrap();
    let ya = ResNet::new(&a, &state_a)
        .unwrap()
        .forward_t(&x, false)
        .unwrap();
    let diff = (yc - ya)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        diff > 1e-3,
        "swapped paths must change the output, diff {diff}"
    );
}
