//! Gateway config parsing: `Config::from_toml` (TOML syntax, types, then
//! `validate`) over arbitrary text returns a config or an error with a
//! message, never panics; a config that loads validates again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_gateway::config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text) {
        Ok(cfg) => {
            if let Err(e) = cfg.validate() {
                panic!("a loaded config fails validate: {e}");
            }
        }
        Err(ConfigError::Invalid { key, why }) => {
            assert!(!key.is_empty() && !why.is_empty(), "unnamed error");
        }
        Err(e) => assert!(!e.to_string().is_empty(), "empty error message"),
    }
});
