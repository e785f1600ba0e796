//! Fuzzes config parsing and validation with arbitrary text.
//!
//! The input, read as UTF-8, goes through `toml::from_str::<jetring::Config>` and then
//! [`jetring::Config::validate`]. Neither may panic; every validation error must name a
//! kebab-case key of the config section, in `field()` and in its message, and must blame a
//! field that is actually wrong (see `jetring_fuzz::check_config`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = toml::from_str::<jetring::Config>(text) {
        jetring_fuzz::check_config(&config);
    }
});
