//! Impossible specs and unknown names give errors that name what is wrong.

use cardinal_zoo::{preset, BlockKind, NetSpec};

fn err(spec: &NetSpec) -> String {
    spec.validate().unwrap_err().to_string()
}

#[test]
fn unknown_preset_lists_the_closest_names() {
    let msg = cardinal_zoo::preset("resnext50_32x4")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("unknown model 'resnext50_32x4'"), "{msg}");
    assert!(msg.contains("'resnext50_32x4d'"), "{msg}");
    let msg = cardinal_zoo::preset("zzzz").unwrap_err().to_string();
    assert!(msg.contains("cardinal models"), "{msg}");
}

#[test]
fn aggregated_basic_block_is_refused_outside_depth2() {
    let mut spec = preset("resnet18").unwrap();
    spec.cardinality = 4;
    spec.bottleneck_width = 16;
    let msg = err(&spec);
    assert!(
        msg.contains("`cardinality`") && msg.contains("Fig. 4"),
        "{msg}"
    );
    spec.aggregated_depth2 = true;
    spec.validate().unwrap();
}

#[test]
fn zero_stages_and_zero_fields_are_named() {
    let mut spec = preset("resnet50").unwrap();
    spec.stages.clear();
    assert!(err(&spec).contains("`stages`"));
    let mut spec = preset("resnet50").unwrap();
    spec.stages[2].blocks = 0;
    assert!(err(&spec).contains("`stages[2].blocks`"));
    let mut spec = preset("resnet50").unwrap();
    spec.cardinality = 0;
    assert!(err(&spec).contains("`cardinality`"));
}

#[test]
fn a_width_that_does_not_scale_to_later_stages_is_refused() {
    let mut spec = preset("cpu_resnet20").unwrap();
    spec.stages[1].planes = 48; // d * 48 / 32 is fractional for odd d
    spec.bottleneck_width = 7;
    let msg = err(&spec);
    assert!(
        msg.contains("`bottleneck_width`") && msg.contains("stage 1"),
        "{msg}"
    );
}

#[test]
fn an_input_too_small_for_the_stages_is_refused() {
    let mut spec = preset("resnet50").unwrap();
    spec.input_size = 0;
    assert!(err(&spec).contains("`input_size`"));
}

#[test]
fn specs_round_trip_through_json_and_reject_unknown_keys() {
    for p in cardinal_zoo::presets() {
        let json = serde_json::to_string(&p.spec).unwrap();
        let back: NetSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p.spec, "{}", p.name);
    }
    let bad = r#"{"stem":{"kind":"cifar","channels":16,"stride":1},"stages":[{"blocks":1,"stride":1,"planes":16}],
        "block":"bottleneck","cardinality":1,"bottleneck_width":16,"expansion":4,"in_channels":1,
        "input_size":28,"classes":10,"groups":3}"#;
    let msg = serde_json::from_str::<NetSpec>(bad)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("unknown field `groups`"), "{msg}");
    assert_eq!(preset("resnet18").unwrap().block, BlockKind::Basic);
}

/// Absurd sizes are refused with the field named, before anything is allocated: a block
/// count that would exhaust memory, an input size that would wrap the MAC count.
#[test]
fn absurd_sizes_are_refused_with_the_field_named() {
    let mut spec = preset("cpu_resnet20").unwrap();
    spec.stages[0].blocks = 100_000_000;
    let msg = err(&spec);
    assert!(
        msg.contains("`stages[0].blocks`") && msg.contains("100000000"),
        "{msg}"
    );
    let mut spec = preset("cpu_resnet20").unwrap();
    spec.input_size = usize::MAX;
    assert!(err(&spec).contains("`input_size`"), "{}", err(&spec));
    assert!(cardinal_zoo::Complexity::of(&spec).is_err());
    for field in ["cardinality", "classes", "in_channels", "expansion"] {
        let mut spec = preset("resnext50_32x4d").unwrap();
        match field {
            "cardinality" => spec.cardinality = usize::MAX / 2,
            "classes" => spec.classes = usize::MAX,
            "in_channels" => spec.in_channels = 1 << 40,
            _ => spec.expansion = 1 << 30,
        }
        assert!(
            err(&spec).contains(&format!("`{field}`")),
            "{field}: {}",
            err(&spec)
        );
    }
}

/// Within the bounds, a count can still exceed 64 bits: an error, never a wrapped number.
#[test]
fn a_multiply_add_count_beyond_64_bits_is_an_error() {
    let mut spec = preset("cpu_resnet20").unwrap();
    spec.block = BlockKind::Bottleneck;
    spec.expansion = cardinal_zoo::spec::MAX_EXPANSION;
    for stage in &mut spec.stages {
        stage.planes = cardinal_zoo::spec::MAX_WIDTH;
    }
    spec.bottleneck_width = cardinal_zoo::spec::MAX_WIDTH;
    spec.input_size = cardinal_zoo::spec::MAX_INPUT_SIZE;
    spec.stem = cardinal_zoo::Stem::Cifar {
        channels: cardinal_zoo::spec::MAX_WIDTH,
        stride: 1,
    };
    for stage in &mut spec.stages {
        stage.stride = 1;
        stage.blocks = 4;
    }
    spec.validate().unwrap();
    let msg = cardinal_zoo::Complexity::of(&spec).unwrap_err().to_string();
    assert!(msg.contains("64 bits"), "{msg}");
}

/// An error's text says each thing once, also when printed with its chain of causes (as
/// the CLI does): `file: header too small`, not `file: header too small: header too small`.
#[test]
fn a_damaged_weights_file_is_named_once_with_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    std::fs::write(&path, b"abc").unwrap();
    let spec = preset("cpu_resnet20").unwrap();
    let err =
        cardinal_zoo::load_safetensors(&path, &spec, "cpu_resnet20", &candle_core::Device::Cpu)
            .unwrap_err();
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        chain.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    assert!(chain.contains("w.safetensors"), "{chain}");
    let cause = chain.rsplit(": ").next().unwrap().to_string();
    assert_eq!(chain.matches(cause.as_str()).count(), 1, "{chain}");
}
