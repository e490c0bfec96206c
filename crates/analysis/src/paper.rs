//! The ResNeXt paper's numbers, as data, each with the table and row it comes from.
//!
//! Xie, Girshick, Dollár, Tu, He: "Aggregated Residual Transformations for Deep Neural
//! Networks", CVPR 2017 (arXiv:1611.05431). Errors are in percent, ImageNet-1K validation,
//! single 224x224 crop unless a row says otherwise; params are counts, FLOPs multiply-adds.

/// Where a number comes from, e.g. "Table 3, ResNeXt-50 (4x24d)".
pub type Source = &'static str;

/// Table 1: ResNet-50 against ResNeXt-50 (32x4d) at nearly the same complexity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Complexity {
    pub model: &'static str,
    pub params: f64,
    pub flops: f64,
    pub source: Source,
}

pub const TABLE_1: [Complexity; 2] = [
    Complexity {
        model: "ResNet-50",
        params: 25.5e6,
        flops: 4.1e9,
        source: "Table 1, ResNet-50",
    },
    Complexity {
        model: "ResNeXt-50 (32x4d)",
        params: 25.0e6,
        flops: 4.2e9,
        source: "Table 1, ResNeXt-50 (32x4d)",
    },
];

/// Table 2: the bottleneck width d that keeps the complexity of ResNet-50's conv2 block
/// (about 70k parameters) for each cardinality C, and the width of the grouped conv (C x d).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreservedWidth {
    pub cardinality: usize,
    pub bottleneck_width: usize,
    pub group_conv_width: usize,
    pub source: Source,
}

pub const TABLE_2: [PreservedWidth; 5] = [
    PreservedWidth {
        cardinality: 1,
        bottleneck_width: 64,
        group_conv_width: 64,
        source: "Table 2, C = 1",
    },
    PreservedWidth {
        cardinality: 2,
        bottleneck_width: 40,
        group_conv_width: 80,
        source: "Table 2, C = 2",
    },
    PreservedWidth {
        cardinality: 4,
        bottleneck_width: 24,
        group_conv_width: 96,
        source: "Table 2, C = 4",
    },
    PreservedWidth {
        cardinality: 8,
        bottleneck_width: 14,
        group_conv_width: 112,
        source: "Table 2, C = 8",
    },
    PreservedWidth {
        cardinality: 32,
        bottleneck_width: 4,
        group_conv_width: 128,
        source: "Table 2, C = 32",
    },
];

/// One measured setting of the paper: a model at C x d with its top-1 (and, where the
/// table gives it, top-5) error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Error {
    pub model: &'static str,
    pub cardinality: usize,
    pub bottleneck_width: usize,
    pub top1: f64,
    pub top5: Option<f64>,
    pub source: Source,
}

const fn error(
    model: &'static str,
    cardinality: usize,
    bottleneck_width: usize,
    top1: f64,
    top5: Option<f64>,
    source: Source,
) -> Error {
    Error {
        model,
        cardinality,
        bottleneck_width,
        top1,
        top5,
        source,
    }
}

/// Table 3: the cardinality ablation at preserved complexity, 50 and 101 layers.
pub const TABLE_3: [Error; 10] = [
    error("ResNet-50", 1, 64, 23.9, None, "Table 3, ResNet-50 (1x64d)"),
    error(
        "ResNeXt-50",
        2,
        40,
        23.0,
        None,
        "Table 3, ResNeXt-50 (2x40d)",
    ),
    error(
        "ResNeXt-50",
        4,
        24,
        22.6,
        None,
        "Table 3, ResNeXt-50 (4x24d)",
    ),
    error(
        "ResNeXt-50",
        8,
        14,
        22.3,
        None,
        "Table 3, ResNeXt-50 (8x14d)",
    ),
    error(
        "ResNeXt-50",
        32,
        4,
        22.2,
        None,
        "Table 3, ResNeXt-50 (32x4d)",
    ),
    error(
        "ResNet-101",
        1,
        64,
        22.0,
        None,
        "Table 3, ResNet-101 (1x64d)",
    ),
    error(
        "ResNeXt-101",
        2,
        40,
        21.7,
        None,
        "Table 3, ResNeXt-101 (2x40d)",
    ),
    error(
        "ResNeXt-101",
        4,
        24,
        21.4,
        None,
        "Table 3, ResNeXt-101 (4x24d)",
    ),
    error(
        "ResNeXt-101",
        8,
        14,
        21.3,
        None,
        "Table 3, ResNeXt-101 (8x14d)",
    ),
    error(
        "ResNeXt-101",
        32,
        4,
        21.2,
        None,
        "Table 3, ResNeXt-101 (32x4d)",
    ),
];

/// Table 4: doubling ResNet-101's complexity by depth, width or cardinality; the first two
/// rows are the 1x complexity references.
pub const TABLE_4: [Error; 6] = [
    error(
        "ResNet-101",
        1,
        64,
        22.0,
        Some(6.0),
        "Table 4, ResNet-101 (1x reference)",
    ),
    error(
        "ResNeXt-101",
        32,
        4,
        21.2,
        Some(5.6),
        "Table 4, ResNeXt-101 (32x4d, 1x reference)",
    ),
    error(
        "ResNet-200",
        1,
        64,
        21.7,
        Some(5.8),
        "Table 4, ResNet-200 (going deeper)",
    ),
    error(
        "ResNet-101, wider",
        1,
        100,
        21.3,
        Some(5.7),
        "Table 4, ResNet-101 wider (1x100d)",
    ),
    error(
        "ResNeXt-101",
        2,
        64,
        20.7,
        Some(5.5),
        "Table 4, ResNeXt-101 (2x64d)",
    ),
    error(
        "ResNeXt-101",
        64,
        4,
        20.4,
        Some(5.3),
        "Table 4, ResNeXt-101 (64x4d)",
    ),
];

/// Table 5: single-crop results against the state of the art; `crop` is the test size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropError {
    pub model: &'static str,
    pub crop: usize,
    pub top1: f64,
    pub top5: f64,
    pub source: Source,
}

pub const TABLE_5: [CropError; 8] = [
    CropError {
        model: "ResNet-101",
        crop: 224,
        top1: 22.0,
        top5: 6.0,
        source: "Table 5, ResNet-101, 224x224",
    },
    CropError {
        model: "ResNet-200",
        crop: 224,
        top1: 21.7,
        top5: 5.8,
        source: "Table 5, ResNet-200, 224x224",
    },
    CropError {
        model: "ResNet-200",
        crop: 320,
        top1: 20.1,
        top5: 4.8,
        source: "Table 5, ResNet-200, 320x320",
    },
    CropError {
        model: "Inception-v3",
        crop: 299,
        top1: 21.2,
        top5: 5.6,
        source: "Table 5, Inception-v3, 299x299",
    },
    CropError {
        model: "Inception-v4",
        crop: 299,
        top1: 20.0,
        top5: 5.0,
        source: "Table 5, Inception-v4, 299x299",
    },
    CropError {
        model: "Inception-ResNet-v2",
        crop: 299,
        top1: 19.9,
        top5: 4.9,
        source: "Table 5, Inception-ResNet-v2, 299x299",
    },
    CropError {
        model: "ResNeXt-101 (64x4d)",
        crop: 224,
        top1: 20.4,
        top5: 5.3,
        source: "Table 5, ResNeXt-101 (64x4d), 224x224",
    },
    CropError {
        model: "ResNeXt-101 (64x4d)",
        crop: 320,
        top1: 19.1,
        top5: 4.4,
        source: "Table 5, ResNeXt-101 (64x4d), 320x320",
    },
];

/// Table 7: CIFAR test error (percent) and model size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CifarError {
    pub model: &'static str,
    pub params: f64,
    pub cifar10: f64,
    pub cifar100: f64,
    pub source: Source,
}

pub const TABLE_7: [CifarError; 3] = [
    CifarError {
        model: "Wide ResNet",
        params: 36.5e6,
        cifar10: 4.17,
        cifar100: 20.50,
        source: "Table 7, Wide ResNet",
    },
    CifarError {
        model: "ResNeXt-29, 8x64d",
        params: 34.4e6,
        cifar10: 3.65,
        cifar100: 17.77,
        source: "Table 7, ResNeXt-29, 8x64d",
    },
    CifarError {
        model: "ResNeXt-29, 16x64d",
        params: 68.1e6,
        cifar10: 3.58,
        cifar100: 17.31,
        source: "Table 7, ResNeXt-29, 16x64d",
    },
];

/// The paper's Table 3 row (50-layer) for a cardinality: the ImageNet setting that a
/// CPU-scale cell at the same C stands in for.
pub fn table3_50_layer(cardinality: usize) -> Option<&'static Error> {
    TABLE_3[..5].iter().find(|e| e.cardinality == cardinality)
}

/// The paper's Table 2 row for a cardinality.
pub fn table2(cardinality: usize) -> Option<&'static PreservedWidth> {
    TABLE_2.iter().find(|w| w.cardinality == cardinality)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_2_preserves_the_block_complexity() {
        // C * (256d + 9d^2 + 256d) stays within 3% of ResNet-50's conv2 block (69,632):
        // the table's own claim, so a mistyped width would show here.
        for row in TABLE_2 {
            let (c, d) = (row.cardinality as f64, row.bottleneck_width as f64);
            let params = c * (256.0 * d + 9.0 * d * d + 256.0 * d);
            assert!((params / 69_632.0 - 1.0).abs() < 0.03, "{row:?}: {params}");
            assert_eq!(row.group_conv_width, row.cardinality * row.bottleneck_width);
        }
    }

    #[test]
    fn table_3_error_falls_with_cardinality() {
        for rows in TABLE_3.chunks(5) {
            assert!(rows.windows(2).all(|w| w[1].top1 < w[0].top1), "{rows:?}");
        }
        assert_eq!(table3_50_layer(32).unwrap().top1, 22.2);
        assert!(table3_50_layer(3).is_none());
    }
}
