#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| waft_fuzz::group_settings(data));
