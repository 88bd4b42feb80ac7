//! The rule loader on arbitrary rule files: a rule set or every error,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_alertd::engine::RuleSet;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = RuleSet::from_files(vec![("fuzz.toml".to_owned(), text.to_owned())], "fuzz");
    }
});
