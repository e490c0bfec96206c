//! Forms A, B and C are one function; a depth-2 aggregated block is a wider dense block.

use candle_core::DType;
use cardinal_zoo::equivalence::{block_forms, depth2, run_all, RELATIVE_TOLERANCE};
use cardinal_zoo::preset;

fn assert_all_pass(checks: &[cardinal_zoo::equivalence::Check], expected: usize) {
    assert_eq!(checks.len(), expected);
    for c in checks {
        assert!(
            c.passed,
            "{} {:?}: {} > {}",
            c.check, c.tensor, c.max_abs_diff, c.tolerance
        );
        assert_eq!(c.tolerance, RELATIVE_TOLERANCE * c.scale, "{}", c.check);
        if c.check.ends_with("params") || c.check.ends_with("MACs") {
            // Counts match exactly.
            assert_eq!((c.max_abs_diff, c.scale), (0.0, 0.0), "{}", c.check);
        } else {
            // A reference of zeros (a missing output or gradient) would pass anything; a
            // huge one would make the tolerance meaningless. He-initialised nets on unit
            // inputs give logits and gradients of order 1e-3 to 1e3.
            assert!(
                c.scale > 1e-6 && c.scale < 1e6,
                "{}: reference scale {} is not a sane magnitude",
                c.check,
                c.scale
            );
        }
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
    // In f64: in f32 the forms' different summation orders move pre-activations by ulps,
    // and one that crosses zero flips a ReLU (or a max-pool's choice), which moves the
    // gradients by far more than rounding; which inputs hit that depends on the seed and on
    // the instruction set's rounding. The identity is exact, so f64 checks it.
    let mut spec = preset("resnext50_8x14d").unwrap();
    spec.stages.truncate(2);
    spec.input_size = 37;
    spec.classes = 7;
    assert_all_pass(&block_forms(&spec, 2, 3, DType::F64).unwrap(), 10);
}

#[test]
fn fig4_depth2_aggregation_is_a_wider_dense_block() {
    assert_all_pass(&depth2(32, 4, 64, 0, DType::F32).unwrap(), 6);
}

/// The checks must be able to fail: forms A and B whose weights come from a conversion
/// that swaps two paths of a block (still valid models, no longer the same function) go
/// through the same checker as `cardinal equivalence`, and it reports them.
#[test]
fn a_wrong_conversion_is_caught_by_the_checker() {
    use cardinal_zoo::convert::convert;
    use cardinal_zoo::equivalence::block_forms_converted;
    use cardinal_zoo::spec::BlockForm;

    let spec = preset("cpu_resnext11_4x12d").unwrap();
    let swapped = |spec: &cardinal_zoo::NetSpec,
                   state: &cardinal_zoo::StateDict,
                   from: BlockForm,
                   to: BlockForm| {
        let mut out = convert(spec, state, from, to)?;
        // Form A names each path's convs; form B concatenates the paths' first convs into
        // one, so swap two output-channel blocks of it.
        match to {
            BlockForm::A => {
                let k0 = "layer1.0.paths.0.conv1.weight".to_string();
                let k1 = "layer1.0.paths.1.conv1.weight".to_string();
                let (w0, w1) = (out[&k0].clone(), out[&k1].clone());
                out.insert(k0, w1);
                out.insert(k1, w0);
            }
            _ => {
                let key = "layer1.0.conv1.weight".to_string();
                let w = &out[&key];
                let half = w.dim(0)? / 2;
                let rows = w.dim(0)?;
                let swapped = candle_core::Tensor::cat(
                    &[w.narrow(0, half, rows - half)?, w.narrow(0, 0, half)?],
                    0,
                )?;
                out.insert(key, swapped);
            }
        }
        Ok(out)
    };
    let checks =
        block_forms_converted(&spec, 7, 4, DType::F64, &swapped, &candle_core::Device::Cpu)
            .unwrap();
    for form in ["A", "B"] {
        let failed: Vec<&str> = checks
            .iter()
            .filter(|c| c.check.starts_with(&format!("form {form} ")) && !c.passed)
            .map(|c| c.check.as_str())
            .collect();
        for what in ["logits (eval)", "logits (train)", "input gradient"] {
            assert!(
                failed.iter().any(|c| c.ends_with(what)),
                "form {form}: a wrong conversion passed `{what}`; failed: {failed:?}"
            );
        }
    }
    // And the right conversion passes the same checker.
    let right = block_forms_converted(&spec, 7, 4, DType::F64, &convert, &candle_core::Device::Cpu)
        .unwrap();
    assert!(right.iter().all(|c| c.passed));
}
