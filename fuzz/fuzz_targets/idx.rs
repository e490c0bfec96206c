//! Any bytes given to the IDX parser give a parsed file or an error, never a panic, and a
//! parsed file is consistent with its header.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(idx) = cardinal_data::idx::parse(bytes, Path::new("fuzz")) {
        // u128: the dimensions themselves may multiply past u64 when one of them is 0.
        let len: u128 = idx.dims.iter().map(|&d| d as u128).product();
        assert_eq!(idx.data.len() as u128, len);
        assert_eq!(bytes.len() as u128, 4 + 4 * idx.dims.len() as u128 + len);
    }
});
