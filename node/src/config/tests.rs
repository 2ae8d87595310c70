use super::*;

fn load(
    toml_text: Option<&str>,
    env: &[(&str, &str)],
    overrides: &Overrides,
) -> Result<Loaded, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let file = toml_text.map(|text| {
        let path = dir.path().join("unitas.toml");
        std::fs::write(&path, text).unwrap();
        path
    });
    let vars = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::load(file.as_deref(), vars, overrides)
}

fn error_text(result: Result<Loaded, ConfigError>) -> String {
    result.map(|_| ()).unwrap_err().to_string()
}

#[test]
fn defaults_give_one_local_territory() {
    let loaded = load(None, &[], &Overrides::default()).unwrap();
    let config = loaded.config;
    assert!(loaded.unknown_keys.is_empty());
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8008");
    assert_eq!(
        config.server.federation_listen.to_string(),
        "127.0.0.1:8448"
    );
    assert_eq!(config.database_url(), "sqlite://./data/unitas.db");
    assert_eq!(config.client_base_url(), "http://127.0.0.1:8008");
    let territories = config.resolved_territories();
    assert_eq!(territories.len(), 1);
    assert_eq!(territories[0].code.as_str(), "local");
    assert_eq!(territories[0].server_name, "localhost:8448");
    assert_eq!(territories[0].federation_host, "localhost:8448");
    assert_eq!(
        territories[0].signing_key_file,
        PathBuf::from("./data/keys/local.signing.key")
    );
}

#[test]
fn file_then_environment_then_flags() {
    let file = "[server]\nlisten = \"127.0.0.1:1001\"\nfederation_listen = \"127.0.0.1:2001\"\ndata_dir = \"/srv/a\"\n";
    let loaded = load(Some(file), &[], &Overrides::default()).unwrap();
    assert_eq!(loaded.config.server.listen.to_string(), "127.0.0.1:1001");

    let env = [
        ("UNITAS__SERVER__LISTEN", "127.0.0.1:1002"),
        ("UNITAS__SERVER__DATA_DIR", "/srv/b"),
    ];
    let loaded = load(Some(file), &env, &Overrides::default()).unwrap();
    assert_eq!(loaded.config.server.listen.to_string(), "127.0.0.1:1002");
    assert_eq!(
        loaded.config.server.federation_listen.to_string(),
        "127.0.0.1:2001",
        "file value kept"
    );
    assert_eq!(loaded.config.database_url(), "sqlite:///srv/b/unitas.db");

    let flags = Overrides {
        listen: Some("127.0.0.1:1003".parse().unwrap()),
        ..Default::default()
    };
    let loaded = load(Some(file), &env, &flags).unwrap();
    assert_eq!(loaded.config.server.listen.to_string(), "127.0.0.1:1003");
    assert_eq!(
        loaded.config.server.data_dir,
        PathBuf::from("/srv/b"),
        "env value kept"
    );
}

#[test]
fn harness_settings_from_the_environment() {
    let env = [
        ("UNITAS__REGISTRATION__ENABLED", "true"),
        ("UNITAS__REGISTRATION__SHARED_SECRET", "12345"),
        ("UNITAS__FEDERATION__VERIFY_TLS", "false"),
        (
            "UNITAS__FEDERATION__IP_RANGE_ALLOWLIST",
            "127.0.0.0/8, ::1/128",
        ),
        ("UNITAS__ROOMS__DEFAULT_VERSION", "11"),
        ("UNITAS__RATE_LIMITS__ENABLED", "false"),
        ("OTHER__SERVER__LISTEN", "nonsense"),
    ];
    let config = load(None, &env, &Overrides::default()).unwrap().config;
    assert!(config.registration.enabled);
    assert_eq!(
        config
            .registration_shared_secret()
            .unwrap()
            .unwrap()
            .expose(),
        "12345"
    );
    assert!(!config.federation.verify_tls);
    let allow: Vec<String> = config
        .federation
        .ip_range_allowlist
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(allow, ["127.0.0.0/8", "::1/128"]);
    assert_eq!(config.rooms.default_version, "11");
    assert!(!config.rate_limits.enabled);
}

#[test]
fn a_bad_value_names_its_key_and_source() {
    let text = error_text(load(
        Some("[server]\nlisten = \"nowhere\"\n"),
        &[],
        &Overrides::default(),
    ));
    assert!(
        text.contains("server.listen") && text.contains("unitas.toml"),
        "{text}"
    );

    let text = error_text(load(
        None,
        &[("UNITAS__STORAGE__MAX_CONNECTIONS", "many")],
        &Overrides::default(),
    ));
    assert!(
        text.contains("storage.max_connections")
            && text.contains("UNITAS__STORAGE__MAX_CONNECTIONS"),
        "{text}"
    );

    let text = error_text(load(Some("[server\n"), &[], &Overrides::default()));
    assert!(text.contains("unitas.toml"), "{text}");
}

#[test]
fn invalid_values_are_refused_with_the_key() {
    let cases = [
        (
            "[rooms]\ndefault_version = \"9\"\n",
            "rooms.default_version",
        ),
        ("[storage]\ndatabase = \"mysql://x\"\n", "storage.database"),
        (
            "[server]\nserver_name = \"bad name\"\n",
            "server.server_name",
        ),
        (
            "[server]\npublic_baseurl = \"ftp://x\"\n",
            "server.public_baseurl",
        ),
        (
            "[server]\ntls_cert_file = \"a.pem\"\n",
            "server.tls_key_file",
        ),
        ("[log]\nlevel = \"[[[\"\n", "log.level"),
        (
            "[federation]\nip_range_allowlist = [\"10.0.0.0/33\"]\n",
            "federation.ip_range_allowlist",
        ),
        (
            "[[territory]]\ncode = \"Denmark\"\nserver_name = \"dk.example\"\n",
            "territory",
        ),
        (
            "[[territory]]\ncode = \"DK\"\nserver_name = \"a.example\"\n[[territory]]\ncode = \"DK\"\nserver_name = \"b.example\"\n",
            "territory[1].code",
        ),
        (
            "[[territory]]\ncode = \"DK\"\nserver_name = \"a.example\"\n[[territory]]\ncode = \"NO\"\nserver_name = \"A.example\"\n",
            "territory[1].server_name",
        ),
        (
            "[[territory]]\ncode = \"DK\"\nserver_name = \"a.example\"\ncolour = 1\n",
            "colour",
        ),
    ];
    for (file, key) in cases {
        let text = error_text(load(Some(file), &[], &Overrides::default()));
        assert!(text.contains(key), "{file:?} -> {text}");
    }
}

#[test]
fn unknown_keys_are_reported_not_fatal() {
    let file = "[server]\nlisten = \"127.0.0.1:1\"\ncolour = \"blue\"\n[nonsense]\nx = 1\n";
    let loaded = load(
        Some(file),
        &[("UNITAS__SERVER__SHAPE", "round")],
        &Overrides::default(),
    )
    .unwrap();
    let mut keys = loaded.unknown_keys;
    keys.sort();
    assert_eq!(keys, ["nonsense", "server.colour", "server.shape"]);
}

#[test]
fn server_name_flag_sets_the_only_territory() {
    let one = "[[territory]]\ncode = \"DK\"\nserver_name = \"a.example\"\n";
    let flags = Overrides {
        server_name: Some("b.example".into()),
        ..Default::default()
    };
    let config = load(Some(one), &[], &flags).unwrap().config;
    assert_eq!(config.resolved_territories()[0].server_name, "b.example");

    let two = format!("{one}[[territory]]\ncode = \"NO\"\nserver_name = \"n.example\"\n");
    let text = error_text(load(Some(&two), &[], &flags));
    assert!(text.contains("--server-name"), "{text}");
}

#[test]
fn secrets_never_show() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("pw");
    std::fs::write(&secret_file, "hunter2\n").unwrap();
    let file = format!(
        "[registration]\nshared_secret = \"s3cr3t-value\"\n[storage]\ndatabase = \"postgres://u:dbpass@h/db\"\ndatabase_password_file = \"{}\"\n",
        secret_file.display()
    );
    let config = load(Some(&file), &[], &Overrides::default())
        .unwrap()
        .config;
    assert_eq!(
        config.database_password().unwrap().unwrap().expose(),
        "hunter2"
    );
    for shown in [format!("{config:?}"), config.to_redacted_toml()] {
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
    let rendered = config.to_redacted_toml();
    assert!(
        !rendered.contains("dbpass") && rendered.contains("postgres://u:***@h/db"),
        "{rendered}"
    );
}

/// The committed example is exactly what the docs generate.
#[test]
fn example_config_matches_the_docs() {
    // The checkout the test runs from (a shared build cache may hold a binary built elsewhere).
    let dir =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let path = Path::new(&dir).join("../examples/unitas.toml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = example::render(&example::InitValues::default());
    assert!(
        committed == generated,
        "examples/unitas.toml is stale: run `cargo run -p unitas --example write_example_config`"
    );
}

/// Uncommenting every documented default gives the defaults back: the docs do not lie.
#[test]
fn documented_defaults_are_the_defaults() {
    let generated = example::render(&example::InitValues::default());
    let mut uncommented = String::new();
    let mut in_territory = false;
    for line in generated.lines() {
        if line.starts_with("#[[territory]]") {
            in_territory = true;
        }
        match line.strip_prefix('#') {
            Some(rest) if !in_territory && rest.contains(" = ") && !rest.starts_with(' ') => {
                uncommented.push_str(rest);
            }
            _ => uncommented.push_str(line),
        }
        uncommented.push('\n');
    }
    let parsed: Config = toml::from_str(&uncommented).unwrap();
    assert_eq!(
        serde_json::to_value(&parsed).unwrap(),
        serde_json::to_value(Config::default()).unwrap()
    );
    // And every key of every section is documented.
    let defaults = serde_json::to_value(Config::default()).unwrap();
    for (section, keys) in defaults.as_object().unwrap() {
        for key in keys.as_object().into_iter().flatten().map(|(k, _)| k) {
            assert!(
                generated.contains(&format!("#{key} =")),
                "{section}.{key} is not in the example"
            );
        }
    }
}
