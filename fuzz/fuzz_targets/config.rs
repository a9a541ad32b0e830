//! Config files and MAYFLY_* overrides.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Half the input as the file, half as one environment override.
    let (file, env) = text.split_at(text.floor_char_boundary(text.len() / 2));
    let env = vec![("MAYFLY_TOKENS_DEFAULT_TTL".to_string(), env.to_string())];
    let _ = mayfly_config::Config::from_toml_str(file, "fuzz.toml", std::path::Path::new("/nonexistent"), &env);
});
