//! The sample configuration in packaging/ is valid and equals the built-in
//! defaults, so the comments describe what the daemon really does.

use mcp_alertd::config::Config;

#[test]
fn the_sample_config_is_valid_and_matches_the_builtin_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/config.toml");
    let mut sample = Config::load(&path).unwrap();
    sample.path = None;
    assert_eq!(sample, Config::builtin());
}
