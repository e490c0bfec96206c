//! Any bytes given to the CIFAR-10 and CIFAR-100 parsers give records or an error, never a
//! panic, and parsed records have in-range labels and whole images.
#![no_main]

use std::path::Path;

use cardinal_data::cifar::{parse, Variant, PIXELS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    for variant in [Variant::Cifar10, Variant::Cifar100] {
        if let Ok(records) = parse(bytes, variant, Path::new("fuzz")) {
            assert_eq!(records.pixels.len(), records.labels.len() * PIXELS);
            assert!(records.labels.iter().all(|&l| (l as usize) < variant.classes()));
            assert_eq!(bytes.len(), records.labels.len() * variant.record_len());
        }
    }
});
