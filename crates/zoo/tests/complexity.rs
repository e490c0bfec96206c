//! Complexity from the spec against torchvision's published figures, the paper's tables,
//! and the instantiated models.

use candle_core::Device;
use cardinal_zoo::layout::tensor_shapes;
use cardinal_zoo::spec::BlockForm;
use cardinal_zoo::{init_weights, preserve_complexity, preset, presets, Complexity, ResNet};

/// torchvision's published params / MACs at 224x224, 1000 classes.
const TORCHVISION: [(&str, u64, u64); 10] = [
    ("resnet18", 11_689_512, 1_814_073_344),
    ("resnet34", 21_797_672, 3_663_761_408),
    ("resnet50", 25_557_032, 4_089_184_256),
    ("resnet101", 44_549_160, 7_801_405_440),
    ("resnet152", 60_192_808, 11_513_626_624),
    ("resnext50_32x4d", 25_028_904, 4_230_479_872),
    ("resnext101_32x8d", 88_791_336, 16_414_015_488),
    ("resnext101_64x4d", 83_455_272, 15_460_270_080),
    ("wide_resnet50_2", 68_883_240, 11_398_021_120),
    ("wide_resnet101_2", 126_886_696, 22_753_050_624),
];

#[test]
fn spec_complexity_equals_torchvision_published_figures() {
    for (name, params, macs) in TORCHVISION {
        let c = Complexity::of(&preset(name).unwrap()).unwrap();
        assert_eq!(c.params, params, "{name} params");
        assert_eq!(c.macs, macs, "{name} MACs");
        assert_eq!(c.input_size, 224);
        // The per-layer and per-stage breakdowns add up to the totals.
        assert_eq!(
            c.layers.iter().map(|l| l.params).sum::<u64>(),
            params,
            "{name}"
        );
        assert_eq!(c.stages.iter().map(|s| s.macs).sum::<u64>(), macs, "{name}");
    }
}

#[test]
fn paper_table_1_and_table_7_totals() {
    // Table 1: ResNet-50 4.1 GFLOPs, ResNeXt-50 (32x4d) 4.2 GFLOPs; both ~25 M params.
    let r50 = Complexity::of(&preset("resnet50").unwrap()).unwrap();
    let x50 = Complexity::of(&preset("resnext50_32x4d").unwrap()).unwrap();
    assert_eq!((r50.macs as f64 / 1e8).round(), 41.0);
    assert_eq!((x50.macs as f64 / 1e8).round(), 42.0);
    assert_eq!(x50.stages.len(), 6, "conv1, conv2..conv5, fc");
    assert_eq!(
        x50.stages[1].structure,
        "3x3 max pool, stride 2; [1x1, 128; 3x3, 128, C=32; 1x1, 256] x3"
    );
    assert_eq!(
        x50.stages.iter().map(|s| s.output_size).collect::<Vec<_>>(),
        vec![112, 56, 28, 14, 7, 1]
    );
    // Table 7: ResNeXt-29 8x64d has 34.4 M params, 16x64d 68.1 M (CIFAR, 10 classes).
    let c8 = Complexity::of(&preset("resnext29_8x64d").unwrap()).unwrap();
    let c16 = Complexity::of(&preset("resnext29_16x64d").unwrap()).unwrap();
    // The paper truncates to one decimal (68,155,210 is printed as 68.1 M).
    assert_eq!(c8.params / 100_000, 344, "{}", c8.params);
    assert_eq!(c16.params / 100_000, 681, "{}", c16.params);
}

#[test]
fn complexity_scales_with_input_size() {
    let mut spec = preset("resnet50").unwrap();
    let at_224 = Complexity::of(&spec).unwrap();
    spec.input_size = 448;
    let at_448 = Complexity::of(&spec).unwrap();
    assert_eq!(at_224.params, at_448.params);
    // Every conv costs 4x at twice the side; only the classifier stays fixed.
    let fc = 2048 * 1000;
    assert_eq!(at_448.macs - fc, 4 * (at_224.macs - fc));
}

#[test]
fn paper_table_2_preserved_complexity() {
    let rows = preserve_complexity(&preset("resnet50").unwrap(), 0, &[1, 2, 4, 8, 32]).unwrap();
    let got: Vec<(usize, usize, usize, u64)> = rows
        .iter()
        .map(|r| {
            (
                r.cardinality,
                r.bottleneck_width,
                r.group_width,
                r.block_params,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, 64, 64, 69_632),
            (2, 40, 80, 69_760),
            (4, 24, 96, 69_888),
            (8, 14, 112, 71_456),
            (32, 4, 128, 70_144),
        ]
    );
    // The paper's ablation presets are exactly the solver's answers.
    for r in &rows[1..4] {
        let name = format!("resnext50_{}x{}d", r.cardinality, r.bottleneck_width);
        let spec = preset(&name).unwrap();
        assert_eq!(
            (spec.cardinality, spec.bottleneck_width),
            (r.cardinality, r.bottleneck_width)
        );
    }
}

/// The whole-network MACs of a preserved-complexity grid stay within 5% of the template's.
fn assert_grid_within_5_percent(template: &str, family: &str, expected_widths: &[usize]) {
    let spec = preset(template).unwrap();
    let rows = preserve_complexity(&spec, 0, &[1, 2, 4, 8, 32]).unwrap();
    let widths: Vec<usize> = rows.iter().map(|r| r.bottleneck_width).collect();
    assert_eq!(widths, expected_widths);
    let base = Complexity::of(&spec).unwrap().macs as f64;
    for r in rows.iter().filter(|r| r.cardinality > 1) {
        let name = format!("{family}_{}x{}d", r.cardinality, r.bottleneck_width);
        let macs = Complexity::of(&preset(&name).unwrap()).unwrap().macs as f64;
        assert!((macs / base - 1.0).abs() < 0.05, "{name}: {macs} vs {base}");
    }
}

#[test]
fn preserved_complexity_grids_stay_within_5_percent() {
    assert_grid_within_5_percent("resnet50", "resnext50", &[64, 40, 24, 14, 4]);
    assert_grid_within_5_percent("resnet101", "resnext101", &[64, 40, 24, 14, 4]);
    assert_grid_within_5_percent("cpu_resnet20", "cpu_resnext20", &[32, 20, 12, 7, 2]);
}

#[test]
fn single_block_stages_drift_further_from_the_block_solution() {
    // With one block per stage every block is a projection block whose 1x1 reduce runs at
    // the pre-stride resolution; the block-level solution then over-shoots the network's
    // MACs by more (8x7d: +5.2%). This is why the cardinality grid uses cpu_resnet20.
    let base = Complexity::of(&preset("cpu_resnet11").unwrap())
        .unwrap()
        .macs as f64;
    let c8 = Complexity::of(&preset("cpu_resnext11_8x7d").unwrap())
        .unwrap()
        .macs as f64;
    let c20 = Complexity::of(&preset("cpu_resnet20").unwrap())
        .unwrap()
        .macs as f64;
    let c20_8 = Complexity::of(&preset("cpu_resnext20_8x7d").unwrap())
        .unwrap()
        .macs as f64;
    assert!(c8 / base - 1.0 > c20_8 / c20 - 1.0);
}

#[test]
fn solver_works_on_later_stages_and_rejects_missing_ones() {
    let spec = preset("resnet50").unwrap();
    let rows = preserve_complexity(&spec, 2, &[1, 32]).unwrap();
    assert_eq!(
        rows[0].bottleneck_width, 256,
        "conv4 of ResNet-50 is 256 wide"
    );
    assert_eq!(
        rows[1].bottleneck_width, 16,
        "ResNeXt-50 32x4d has d = 16 at conv4"
    );
    let err = preserve_complexity(&spec, 4, &[2]).unwrap_err().to_string();
    assert!(err.contains("stage 5 does not exist"), "{err}");
}

#[test]
fn instantiated_models_have_the_spec_parameter_count() {
    for p in presets() {
        let c = Complexity::of(&p.spec).unwrap();
        let state = init_weights(&p.spec, 0, &Device::Cpu).unwrap();
        let model = ResNet::new(&p.spec, &state).unwrap();
        assert_eq!(model.params().count() as u64, c.params, "{}", p.name);
        let names: Vec<String> = tensor_shapes(&p.spec).into_iter().map(|t| t.0).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(
            model.params().names().cloned().collect::<Vec<_>>(),
            sorted,
            "{}",
            p.name
        );
    }
}

#[test]
fn every_form_has_the_same_complexity_and_parameter_count() {
    for name in ["cpu_resnext11_4x12d", "resnext29_8x64d", "resnext50_32x4d"] {
        let spec = preset(name).unwrap();
        let reference = Complexity::of(&spec).unwrap();
        for form in BlockForm::ALL {
            let spec_f = cardinal_zoo::NetSpec {
                form,
                ..spec.clone()
            };
            let c = Complexity::of(&spec_f).unwrap();
            assert_eq!(
                (c.params, c.macs),
                (reference.params, reference.macs),
                "{name} form {form}"
            );
            let state = init_weights(&spec_f, 3, &Device::Cpu).unwrap();
            let model = ResNet::new(&spec_f, &state).unwrap();
            assert_eq!(
                model.params().count() as u64,
                c.params,
                "{name} form {form}"
            );
        }
    }
}
