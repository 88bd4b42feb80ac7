//! The sample configuration in packaging/ is valid and equals the built-in
//! defaults but for the installed rule and format directories, so the
//! comments describe what the daemon really does and the files an operator
//! edits are the ones in force.

use mcp_alertd::config::Config;

#[test]
fn the_sample_config_is_valid_and_matches_the_builtin_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/config.toml");
    let mut sample = Config::load(&path).unwrap();
    sample.path = None;
    assert_eq!(
        sample.rules_dir.as_deref(),
        Some(std::path::Path::new("/etc/mcp-alertd/rules"))
    );
    assert_eq!(
        sample.formats_dir.as_deref(),
        Some(std::path::Path::new("/etc/mcp-alertd/formats"))
    );
    sample.rules_dir = None;
    sample.formats_dir = None;
    assert_eq!(sample, Config::builtin());
}

/// The package `packaging/build-deb.sh` built (scripts/test.sh sets this).
fn built_deb() -> std::path::PathBuf {
    match std::env::var_os("MCP_ALERTD_DEB") {
        Some(p) => p.into(),
        None => panic!("set MCP_ALERTD_DEB to a .deb built by packaging/build-deb.sh"),
    }
}

#[test]
#[ignore = "needs the .deb from packaging/build-deb.sh in MCP_ALERTD_DEB; scripts/test.sh builds it"]
fn the_debian_package_installs_a_working_daemon() {
    use std::process::Command;
    let deb = built_deb();
    let list = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    assert!(list.status.success());
    let list = String::from_utf8_lossy(&list.stdout);
    for path in [
        "./usr/bin/mcp-alertd",
        "./etc/mcp-alertd/config.toml",
        "./etc/mcp-alertd/rules/auth.toml",
        "./etc/mcp-alertd/rules/tasks.toml",
        "./etc/mcp-alertd/formats/toolhive.toml",
        "./etc/mcp-alertd/formats/ocsf.toml",
        "./usr/share/doc/mcp-alertd/formats.md",
        "./usr/share/doc/mcp-alertd/alert-formats.md",
        "./usr/share/doc/mcp-alertd/templates/pagerduty.json",
        "./lib/systemd/system/mcp-alertd.service",
        "./lib/systemd/system/mcp-alertd-syslog-udp.socket",
        "./lib/systemd/system/mcp-alertd-syslog-tls.socket",
        "./usr/share/man/man1/mcp-alertd.1.gz",
        "./usr/share/man/man1/mcp-alertd-run.1.gz",
        "./usr/share/bash-completion/completions/mcp-alertd",
        "./usr/share/zsh/vendor-completions/_mcp-alertd",
        "./usr/share/fish/vendor_completions.d/mcp-alertd.fish",
        "./usr/share/doc/mcp-alertd/README.md",
        "./usr/share/doc/mcp-alertd/examples/audit.jsonl",
    ] {
        assert!(
            list.lines()
                .any(|l| l.ends_with(path) || l.contains(&format!("{path} "))),
            "{path} missing from:\n{list}"
        );
    }
    // The configuration is a conffile; the maintainer scripts create the
    // user and directories.
    let control = tempfile::tempdir().unwrap();
    assert!(
        Command::new("dpkg-deb")
            .arg("-e")
            .arg(&deb)
            .arg(control.path())
            .status()
            .unwrap()
            .success()
    );
    let conffiles = std::fs::read_to_string(control.path().join("conffiles")).unwrap();
    assert!(
        conffiles.contains("/etc/mcp-alertd/config.toml"),
        "{conffiles}"
    );
    let postinst = std::fs::read_to_string(control.path().join("postinst")).unwrap();
    assert!(postinst.contains("adduser --system"), "{postinst}");

    // Installed in a throwaway root, the binary checks the installed
    // configuration and rules, and the shipped rule tests pass.
    let root = tempfile::tempdir().unwrap();
    assert!(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(root.path())
            .status()
            .unwrap()
            .success()
    );
    let bin = root.path().join("usr/bin/mcp-alertd");
    let etc = root.path().join("etc/mcp-alertd");
    let check = Command::new(&bin)
        .args(["check", "--config"])
        .arg(etc.join("config.toml"))
        .args(["--rules"])
        .arg(etc.join("rules"))
        .args(["--formats"])
        .arg(etc.join("formats"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("auth_failure_burst"));
    assert!(String::from_utf8_lossy(&check.stdout).contains("formats OK: 9 formats"));
    let tests = Command::new(&bin)
        .args(["rules", "test", "--rules"])
        .arg(etc.join("rules"))
        .arg(root.path().join("usr/share/doc/mcp-alertd/rule-tests"))
        .output()
        .unwrap();
    assert!(
        tests.status.success(),
        "{}",
        String::from_utf8_lossy(&tests.stdout)
    );
    let man = Command::new("gzip")
        .arg("-dc")
        .arg(root.path().join("usr/share/man/man1/mcp-alertd.1.gz"))
        .output()
        .unwrap();
    let man = String::from_utf8_lossy(&man.stdout);
    assert!(
        man.contains(".TH mcp-alertd 1"),
        "{}",
        &man[..200.min(man.len())]
    );
}

/// Every commented `[[sinks]]` example of the sample config is valid as
/// written (uncommented into a config of its own).
#[test]
fn the_sample_configs_sink_examples_are_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/config.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut blocks: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let body = line
            .strip_prefix("# ")
            .or_else(|| (line == "#").then_some(""));
        match (body, &mut current) {
            (Some(b), _) if b.starts_with("[[sinks]]") => {
                if let Some(done) = current.take() {
                    blocks.push(done);
                }
                current = Some(format!("{b}\n"));
            }
            (Some(b), Some(c)) if !b.is_empty() && (b.starts_with('[') || b.contains(" = ")) => {
                c.push_str(b);
                c.push('\n');
            }
            (_, Some(_)) => blocks.extend(current.take()),
            _ => {}
        }
    }
    let types: Vec<String> = blocks
        .iter()
        .map(|b| {
            match Config::parse(b) {
                Ok(config) => config.sinks[0].type_name().to_owned(),
                // The example names files of the site (a CA) that this
                // machine lacks; everything else must hold.
                Err(e) if e.iter().all(|m| m.contains("No such file")) => b
                    .lines()
                    .find_map(|l| l.strip_prefix("type = \""))
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
                    .to_owned(),
                Err(e) => panic!("{b}\n{e:?}"),
            }
        })
        .collect();
    for t in [
        "stdout",
        "file",
        "webhook",
        "email",
        "syslog",
        "kafka",
        "splunk_hec",
        "elasticsearch",
    ] {
        assert!(types.iter().any(|x| x == t), "no {t} example: {types:?}");
    }
}
