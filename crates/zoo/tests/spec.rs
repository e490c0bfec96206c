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
