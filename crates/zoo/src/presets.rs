//! Named models. Builders are thin functions over one constructor, as in torchvision:
//! ResNeXt is a ResNet bottleneck with `cardinality` and `bottleneck_width` set.

use crate::error::{Result, ZooError};
use crate::spec::{BlockForm, BlockKind, NetSpec, StageSpec, Stem};

/// One named model with a line of description for `cardinal models`.
#[derive(Debug, Clone)]
pub struct Preset {
    pub name: &'static str,
    pub family: &'static str,
    pub description: &'static str,
    pub spec: NetSpec,
}

fn stages(blocks: &[usize], planes: &[usize], strides: &[usize]) -> Vec<StageSpec> {
    blocks
        .iter()
        .zip(planes)
        .zip(strides)
        .map(|((&blocks, &planes), &stride)| StageSpec {
            blocks,
            stride,
            planes,
        })
        .collect()
}

/// The ImageNet networks (224x224, 1000 classes), torchvision's constructor.
fn imagenet(block: BlockKind, blocks: [usize; 4], cardinality: usize, width: usize) -> NetSpec {
    NetSpec {
        stem: Stem::Imagenet { channels: 64 },
        stages: stages(&blocks, &[64, 128, 256, 512], &[1, 2, 2, 2]),
        block,
        cardinality,
        bottleneck_width: width,
        expansion: match block {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        },
        form: BlockForm::C,
        in_channels: 3,
        input_size: 224,
        classes: 1000,
        zero_init_last_bn: false,
        aggregated_depth2: false,
    }
}

/// The paper's CIFAR ResNeXt-29: 3x3 stem of 64, three stages of three bottlenecks.
fn cifar29(cardinality: usize, width: usize) -> NetSpec {
    NetSpec {
        stem: Stem::Cifar {
            channels: 64,
            stride: 1,
        },
        stages: stages(&[3, 3, 3], &[64, 128, 256], &[1, 2, 2]),
        block: BlockKind::Bottleneck,
        cardinality,
        bottleneck_width: width,
        expansion: 4,
        form: BlockForm::C,
        in_channels: 3,
        input_size: 32,
        classes: 10,
        zero_init_last_bn: false,
        aggregated_depth2: false,
    }
}

/// The CPU family: a stride-2 3x3 stem of 32 channels, three stages of bottlenecks with
/// planes 32/64/128 (outputs 128/256/512), sized for 28x28 Fashion-MNIST (and 32x32 CIFAR
/// with `in_channels: 3, input_size: 32`). Width over depth keeps a train step cheap.
fn cpu(blocks: [usize; 3], cardinality: usize, width: usize) -> NetSpec {
    NetSpec {
        stem: Stem::Cifar {
            channels: 32,
            stride: 2,
        },
        stages: stages(&blocks, &[32, 64, 128], &[1, 2, 2]),
        block: BlockKind::Bottleneck,
        cardinality,
        bottleneck_width: width,
        expansion: 4,
        form: BlockForm::C,
        in_channels: 1,
        input_size: 28,
        classes: 10,
        zero_init_last_bn: false,
        aggregated_depth2: false,
    }
}

/// Every named model, in the order `cardinal models` lists them.
pub fn presets() -> Vec<Preset> {
    use BlockKind::{Basic, Bottleneck};
    let p = |name, family, description, spec| Preset {
        name,
        family,
        description,
        spec,
    };
    let imagenet_family = "imagenet (torchvision)";
    let ablation = "imagenet (paper ablation)";
    vec![
        p(
            "resnet18",
            imagenet_family,
            "ResNet-18",
            imagenet(Basic, [2, 2, 2, 2], 1, 64),
        ),
        p(
            "resnet34",
            imagenet_family,
            "ResNet-34",
            imagenet(Basic, [3, 4, 6, 3], 1, 64),
        ),
        p(
            "resnet50",
            imagenet_family,
            "ResNet-50 (Table 1, left)",
            imagenet(Bottleneck, [3, 4, 6, 3], 1, 64),
        ),
        p(
            "resnet101",
            imagenet_family,
            "ResNet-101",
            imagenet(Bottleneck, [3, 4, 23, 3], 1, 64),
        ),
        p(
            "resnet152",
            imagenet_family,
            "ResNet-152",
            imagenet(Bottleneck, [3, 8, 36, 3], 1, 64),
        ),
        p(
            "resnet200",
            imagenet_family,
            "ResNet-200",
            imagenet(Bottleneck, [3, 24, 36, 3], 1, 64),
        ),
        p(
            "resnext50_32x4d",
            imagenet_family,
            "ResNeXt-50 32x4d (Table 1, right)",
            imagenet(Bottleneck, [3, 4, 6, 3], 32, 4),
        ),
        p(
            "resnext101_32x4d",
            imagenet_family,
            "ResNeXt-101 32x4d (Table 3)",
            imagenet(Bottleneck, [3, 4, 23, 3], 32, 4),
        ),
        p(
            "resnext101_32x8d",
            imagenet_family,
            "ResNeXt-101 32x8d",
            imagenet(Bottleneck, [3, 4, 23, 3], 32, 8),
        ),
        p(
            "resnext101_64x4d",
            imagenet_family,
            "ResNeXt-101 64x4d (Table 4, 2x complexity)",
            imagenet(Bottleneck, [3, 4, 23, 3], 64, 4),
        ),
        p(
            "wide_resnet50_2",
            imagenet_family,
            "Wide ResNet-50-2",
            imagenet(Bottleneck, [3, 4, 6, 3], 1, 128),
        ),
        p(
            "wide_resnet101_2",
            imagenet_family,
            "Wide ResNet-101-2",
            imagenet(Bottleneck, [3, 4, 23, 3], 1, 128),
        ),
        p(
            "resnext50_2x40d",
            ablation,
            "ResNeXt-50 2x40d (Table 3)",
            imagenet(Bottleneck, [3, 4, 6, 3], 2, 40),
        ),
        p(
            "resnext50_4x24d",
            ablation,
            "ResNeXt-50 4x24d (Table 3)",
            imagenet(Bottleneck, [3, 4, 6, 3], 4, 24),
        ),
        p(
            "resnext50_8x14d",
            ablation,
            "ResNeXt-50 8x14d (Table 3)",
            imagenet(Bottleneck, [3, 4, 6, 3], 8, 14),
        ),
        p(
            "resnext101_2x40d",
            ablation,
            "ResNeXt-101 2x40d (Table 3)",
            imagenet(Bottleneck, [3, 4, 23, 3], 2, 40),
        ),
        p(
            "resnext101_4x24d",
            ablation,
            "ResNeXt-101 4x24d (Table 3)",
            imagenet(Bottleneck, [3, 4, 23, 3], 4, 24),
        ),
        p(
            "resnext101_8x14d",
            ablation,
            "ResNeXt-101 8x14d (Table 3)",
            imagenet(Bottleneck, [3, 4, 23, 3], 8, 14),
        ),
        p(
            "resnext101_2x64d",
            ablation,
            "ResNeXt-101 2x64d (Table 4, 2x complexity)",
            imagenet(Bottleneck, [3, 4, 23, 3], 2, 64),
        ),
        p(
            "resnet101_1x100d",
            ablation,
            "wider ResNet-101 1x100d (Table 4)",
            imagenet(Bottleneck, [3, 4, 23, 3], 1, 100),
        ),
        p(
            "resnext29_8x64d",
            "cifar (paper Table 7)",
            "ResNeXt-29 8x64d",
            cifar29(8, 64),
        ),
        p(
            "resnext29_16x64d",
            "cifar (paper Table 7)",
            "ResNeXt-29 16x64d",
            cifar29(16, 64),
        ),
        p(
            "cpu_resnet11",
            "cpu (28x28 / 32x32)",
            "template: 1 block per stage, 1x32d",
            cpu([1, 1, 1], 1, 32),
        ),
        p(
            "cpu_resnext11_2x20d",
            "cpu (28x28 / 32x32)",
            "cpu_resnet11 at C=2, preserved complexity",
            cpu([1, 1, 1], 2, 20),
        ),
        p(
            "cpu_resnext11_4x12d",
            "cpu (28x28 / 32x32)",
            "cpu_resnet11 at C=4, preserved complexity",
            cpu([1, 1, 1], 4, 12),
        ),
        p(
            "cpu_resnext11_8x7d",
            "cpu (28x28 / 32x32)",
            "cpu_resnet11 at C=8, preserved complexity",
            cpu([1, 1, 1], 8, 7),
        ),
        p(
            "cpu_resnext11_32x2d",
            "cpu (28x28 / 32x32)",
            "cpu_resnet11 at C=32, preserved complexity",
            cpu([1, 1, 1], 32, 2),
        ),
        p(
            "cpu_resnet14",
            "cpu (28x28 / 32x32)",
            "template of the cardinality grid: blocks 2/1/1, 1x32d",
            cpu([2, 1, 1], 1, 32),
        ),
        p(
            "cpu_resnext14_2x20d",
            "cpu (28x28 / 32x32)",
            "cpu_resnet14 at C=2, preserved complexity",
            cpu([2, 1, 1], 2, 20),
        ),
        p(
            "cpu_resnext14_4x12d",
            "cpu (28x28 / 32x32)",
            "cpu_resnet14 at C=4, preserved complexity",
            cpu([2, 1, 1], 4, 12),
        ),
        p(
            "cpu_resnext14_8x7d",
            "cpu (28x28 / 32x32)",
            "cpu_resnet14 at C=8, preserved complexity",
            cpu([2, 1, 1], 8, 7),
        ),
        p(
            "cpu_resnext14_32x2d",
            "cpu (28x28 / 32x32)",
            "cpu_resnet14 at C=32, preserved complexity",
            cpu([2, 1, 1], 32, 2),
        ),
        p(
            "cpu_resnet20",
            "cpu (28x28 / 32x32)",
            "template: 2 blocks per stage, 1x32d",
            cpu([2, 2, 2], 1, 32),
        ),
        p(
            "cpu_resnext20_2x20d",
            "cpu (28x28 / 32x32)",
            "cpu_resnet20 at C=2, preserved complexity",
            cpu([2, 2, 2], 2, 20),
        ),
        p(
            "cpu_resnext20_4x12d",
            "cpu (28x28 / 32x32)",
            "cpu_resnet20 at C=4, preserved complexity",
            cpu([2, 2, 2], 4, 12),
        ),
        p(
            "cpu_resnext20_8x7d",
            "cpu (28x28 / 32x32)",
            "cpu_resnet20 at C=8, preserved complexity",
            cpu([2, 2, 2], 8, 7),
        ),
        p(
            "cpu_resnext20_32x2d",
            "cpu (28x28 / 32x32)",
            "cpu_resnet20 at C=32, preserved complexity",
            cpu([2, 2, 2], 32, 2),
        ),
        p(
            "cpu_resnet29",
            "cpu (28x28 / 32x32)",
            "template of the deeper cardinality grid (about twice cpu_resnet14's MACs): 3 blocks per stage, 1x32d",
            cpu([3, 3, 3], 1, 32),
        ),
        p(
            "cpu_resnext29_32x2d",
            "cpu (28x28 / 32x32)",
            "cpu_resnet29 at C=32, preserved complexity",
            cpu([3, 3, 3], 32, 2),
        ),
    ]
}

pub fn preset_names() -> Vec<&'static str> {
    presets().iter().map(|p| p.name).collect()
}

/// Looks a preset up by name; an unknown name lists the closest ones.
pub fn preset(name: &str) -> Result<NetSpec> {
    let all = presets();
    if let Some(p) = all.iter().find(|p| p.name == name) {
        return Ok(p.spec.clone());
    }
    let mut scored: Vec<(f64, &str)> = all
        .iter()
        .map(|p| (strsim::jaro_winkler(&name.to_lowercase(), p.name), p.name))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let suggestions = scored
        .iter()
        .filter(|(score, _)| *score > 0.7)
        .take(3)
        .map(|(_, n)| n.to_string())
        .collect();
    Err(ZooError::UnknownPreset {
        name: name.to_string(),
        suggestions,
    })
}

/// The name of the preset whose spec is exactly `spec`, if there is one.
pub fn preset_named_for(spec: &NetSpec) -> Option<&'static str> {
    presets()
        .into_iter()
        .find(|p| p.spec == *spec)
        .map(|p| p.name)
}
