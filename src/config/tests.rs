use super::*;

fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<Vec<_>>()
        .into_iter()
}

#[test]
fn defaults_load_and_are_embedded() {
    let s =
        Settings::from_parts(None, "", env(&[("ADAPTD_STATE_DIR", "/tmp/x")])).expect("defaults");
    assert_eq!(s.broker.target, BrokerTarget::Embedded { port: 1883 });
    assert!(s.root.starts_with("adaptd/"));
    assert_eq!(s.state.dir, PathBuf::from("/tmp/x"));
    assert_eq!(s.publish.top_k, 3);
}

#[test]
fn env_overrides_take_the_type_of_the_key() {
    let s = Settings::from_parts(
        None,
        "",
        env(&[
            ("ADAPTD_BROKER_URL", "mqtt://127.0.0.1:1999"),
            ("ADAPTD_DEVICE_ID", "cam1"),
            ("ADAPTD_STATE_DIR", "/tmp/s"),
            ("ADAPTD_PUBLISH_TOP_K", "5"),
            ("ADAPTD_HEAD_ALGORITHM", "slda"),
            ("ADAPTD_STATE_UNLEARN_MAX_BYTES", "1048576"),
            ("ADAPTD_LOG", "debug"),
            ("PATH", "/bin"),
        ]),
    )
    .expect("env");
    assert_eq!(
        s.broker.target,
        BrokerTarget::External {
            host: "127.0.0.1".into(),
            port: 1999,
            tls: None
        }
    );
    assert_eq!(s.root, "adaptd/cam1");
    assert_eq!(s.broker.client_id, "adaptd-cam1");
    assert_eq!(s.publish.top_k, 5);
    assert_eq!(s.head.algorithm.to_string(), "slda");
    assert_eq!(s.state.unlearn_max_bytes, 1 << 20);
}

#[test]
fn unknown_keys_are_errors_in_file_and_env() {
    let e = Settings::from_parts(Some("[broker]\nurll = \"x\"\n"), "f.toml", env(&[]))
        .expect_err("typo");
    assert!(matches!(e, ConfigError::UnknownKey { .. }), "{e}");
    let e =
        Settings::from_parts(None, "", env(&[("ADAPTD_BROKER_URLL", "x")])).expect_err("env typo");
    assert!(e.to_string().contains("ADAPTD_BROKER_URLL"));
    let e = Settings::from_parts(Some("[nope]\na = 1\n"), "f.toml", env(&[])).expect_err("section");
    assert!(matches!(e, ConfigError::UnknownKey { .. }));
}

#[test]
fn invalid_values_are_refused() {
    for (text, key) in [
        ("[device]\nid = \"a/b\"\n", "device.id"),
        ("[broker]\nurl = \"http://x\"\n", "broker.url"),
        ("[broker]\nurl = \"mqtts://x\"\n", "broker.ca_file"),
        ("[publish]\ntop_k = 0\n", "publish.top_k"),
        (
            "[state]\nunlearn_max_bytes = 1073741825\n",
            "state.unlearn_max_bytes",
        ),
    ] {
        let e = Settings::from_parts(Some(text), "f", env(&[("ADAPTD_STATE_DIR", "/tmp")]))
            .expect_err(text);
        assert!(e.to_string().contains(key), "{e}");
    }
    let e = Settings::from_parts(Some("[broker]\nkeepalive_secs = \"x\"\n"), "f", env(&[]))
        .expect_err("type");
    assert!(matches!(e, ConfigError::Parse { .. }));
}

#[test]
fn shipped_head_defaults_equal_the_code_defaults() {
    let s = Settings::from_parts(None, "", env(&[("ADAPTD_STATE_DIR", "/tmp")])).expect("defaults");
    assert_eq!(s.head, HeadConfig::default());
    let e = Settings::from_parts(
        Some("[head]\nslda_shrinkage = 2.0\n"),
        "f",
        env(&[("ADAPTD_STATE_DIR", "/tmp")]),
    )
    .expect_err("bad shrinkage");
    assert!(e.to_string().contains("head"), "{e}");
}

#[test]
fn sources_and_urls() {
    let s = Settings::from_parts(
        Some("[broker]\nurl = \"mqtt://broker.lan\"\n[[sources]]\ntopic = \"cam/+/snap\"\n"),
        "f",
        env(&[("ADAPTD_STATE_DIR", "/tmp")]),
    )
    .expect("sources");
    assert_eq!(s.sources.len(), 1);
    assert!(matches!(
        s.broker.target,
        BrokerTarget::External { port: 1883, .. }
    ));
}

#[test]
fn stream_sources_are_validated() {
    let parse =
        |text: &str| Settings::from_parts(Some(text), "f", env(&[("ADAPTD_STATE_DIR", "/tmp")]));
    let s = parse("[[sources]]\ntopic = \"hermes/audioServer/+/audioFrame\"\nkind = \"stream\"\n")
        .expect("stream");
    let stream = s.sources[0].stream.clone().expect("a stream");
    assert_eq!(stream.window_seconds, None);
    assert_eq!((stream.hop_seconds, stream.threshold), (0.48, 0.5));
    let s = parse(
        "[[sources]]\ntopic = \"t\"\nkind = \"stream\"\nwindow_seconds = 2.0\nhop_seconds = 0.25\nthreshold = 0.8\n",
    )
    .expect("stream");
    assert_eq!(
        s.sources[0].stream.as_ref().and_then(|x| x.window_seconds),
        Some(2.0)
    );
    for bad in [
        "kind = \"video\"",
        "hop_seconds = 0.5",
        "kind = \"stream\"\nhop_seconds = 0.01",
        "kind = \"stream\"\nwindow_seconds = 1.0\nhop_seconds = 2.0",
        "kind = \"stream\"\nwindow_seconds = 60.0",
        "kind = \"stream\"\nthreshold = 1.5",
        "kind = \"stream\"\nwindow_seconds = nan",
    ] {
        let e = parse(&format!("[[sources]]\ntopic = \"t\"\n{bad}\n")).expect_err(bad);
        assert!(e.to_string().contains("sources"), "{bad}: {e}");
    }
}

#[test]
fn readings_sources_are_validated() {
    let parse =
        |text: &str| Settings::from_parts(Some(text), "f", env(&[("ADAPTD_STATE_DIR", "/tmp")]));
    let s =
        parse("[[sources]]\ntopic = \"sensors/+/imu\"\nkind = \"readings\"\n").expect("readings");
    let src = &s.sources[0];
    assert_eq!(src.readings.as_ref().map(|r| r.hop), Some(None));
    assert!(src.stream.is_none() && src.frigate.is_none());
    let s = parse("[[sources]]\ntopic = \"t\"\nkind = \"readings\"\nhop_readings = 25\n")
        .expect("readings");
    assert_eq!(s.sources[0].readings.as_ref().and_then(|r| r.hop), Some(25));
    for bad in [
        "hop_readings = 10",
        "kind = \"stream\"\nhop_readings = 10",
        "kind = \"readings\"\nhop_readings = 0",
        "kind = \"readings\"\nhop_seconds = 1.0",
        "kind = \"readings\"\ntext_field = \"x\"",
        "kind = \"readings\"\nhop_readings = -1",
    ] {
        let e = parse(&format!("[[sources]]\ntopic = \"t\"\n{bad}\n")).expect_err(bad);
        assert!(
            e.to_string().contains("sources") || e.to_string().contains("hop_readings"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn frigate_sources_and_homeassistant_are_validated() {
    let parse =
        |text: &str| Settings::from_parts(Some(text), "f", env(&[("ADAPTD_STATE_DIR", "/tmp")]));
    let s = parse("[[sources]]\ntopic = \"frigate/\"\nkind = \"frigate\"\ncameras = [\"door\"]\n")
        .expect("frigate");
    let src = &s.sources[0];
    assert_eq!(src.topic, "frigate/+/+/snapshot");
    let f = src.frigate.clone().expect("a frigate source");
    assert_eq!(f.origin("frigate/door/cat/snapshot"), Some(("door", "cat")));
    assert_eq!(f.origin("frigate/yard/cat/snapshot"), None);
    assert_eq!(f.origin("frigate/door/cat"), None);
    assert_eq!(f.origin("frigate/door/cat/thumbnail"), None);
    assert_eq!(f.origin("frigatex/door/cat/snapshot"), None);
    for bad in [
        "kind = \"frigate\"\nhop_seconds = 1.0",
        "kind = \"frames\"\ncameras = [\"door\"]",
        "kind = \"frigate\"\nobjects = [\"a/b\"]",
    ] {
        let e = parse(&format!("[[sources]]\ntopic = \"frigate\"\n{bad}\n")).expect_err(bad);
        assert!(e.to_string().contains("sources"), "{bad}: {e}");
    }
    let e =
        parse("[[sources]]\ntopic = \"frigate/#\"\nkind = \"frigate\"\n").expect_err("wildcard");
    assert!(e.to_string().contains("prefix"), "{e}");

    // [homeassistant]: auto by default, named after the device.
    let s = parse("[device]\nid = \"cam1\"\n").expect("defaults");
    assert_eq!(s.homeassistant.enabled, None);
    assert_eq!(s.homeassistant.node_name, "adaptd cam1");
    assert_eq!(s.homeassistant.discovery_prefix, "homeassistant");
    let s =
        parse("[homeassistant]\nenabled = \"false\"\ndiscovery_prefix = \"ha/\"\n").expect("off");
    assert_eq!(s.homeassistant.enabled, Some(false));
    assert_eq!(s.homeassistant.discovery_prefix, "ha");
    for bad in [
        "enabled = \"maybe\"",
        "discovery_prefix = \"\"",
        "discovery_prefix = \"ha/#\"",
        "node_name = \"a\\nb\"",
    ] {
        let e = parse(&format!("[homeassistant]\n{bad}\n")).expect_err(bad);
        assert!(e.to_string().contains("homeassistant"), "{bad}: {e}");
    }
}

#[test]
fn names_are_validated() {
    assert!(crate::head::validate_label("cat").is_ok());
    for bad in ["", "a+b", "a#", "a/b", "a\0b", &"x".repeat(65)] {
        assert!(crate::head::validate_label(bad).is_err(), "{bad:?}");
    }
}

/// The `[name]` table of the shipped file, deserialized on its own.
fn shipped<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let mut table: toml::Table = DEFAULT_TOML.parse().expect("shipped TOML");
    let section = table.remove(name).expect(name);
    section.try_into().expect(name)
}

/// `[head]`, `[adapt]` and `[fleet]` also have Rust defaults: `Default` (used by `adaptd eval`
/// and tests) and serde's per-field defaults (used for partial tables: `--head-config`,
/// `--adapt-config`, head files written before a field existed). Both must equal the shipped
/// file, which is what the daemon runs with.
#[test]
fn shipped_defaults_equal_the_code_defaults_in_every_section() {
    fn check<T>(name: &str)
    where
        T: serde::de::DeserializeOwned + Default + PartialEq + std::fmt::Debug,
    {
        let file: T = shipped(name);
        assert_eq!(file, T::default(), "[{name}]: shipped file vs Default");
        let omitted: T = toml::Value::Table(toml::Table::new())
            .try_into()
            .expect(name);
        assert_eq!(file, omitted, "[{name}]: shipped file vs serde defaults");
    }
    check::<HeadConfig>("head");
    check::<AdaptConfig>("adapt");
    check::<FleetConfig>("fleet");
}

/// The other sections have no Rust defaults, so the shipped file is their only copy: a key
/// missing after the merge is an error, never a silent value from the code.
#[test]
fn other_sections_have_no_code_defaults() {
    use super::raw::{
        RawBroker, RawDevice, RawHomeAssistant, RawModel, RawPublish, RawService, RawState,
    };
    fn none<T: serde::de::DeserializeOwned>(name: &str) {
        let empty = toml::Value::Table(toml::Table::new());
        assert!(empty.try_into::<T>().is_err(), "[{name}] has code defaults");
        let _: T = shipped(name);
    }
    none::<RawDevice>("device");
    none::<RawBroker>("broker");
    none::<RawModel>("model");
    none::<RawPublish>("publish");
    none::<RawState>("state");
    none::<RawService>("service");
    none::<RawHomeAssistant>("homeassistant");
    let table: toml::Table = DEFAULT_TOML.parse().expect("shipped TOML");
    let mut sections: Vec<&str> = table.keys().map(String::as_str).collect();
    sections.sort_unstable();
    assert_eq!(
        sections,
        [
            "adapt",
            "broker",
            "device",
            "fleet",
            "head",
            "homeassistant",
            "model",
            "publish",
            "service",
            "state"
        ],
        "a new section needs its defaults checked here"
    );
}

#[test]
fn env_lists_take_commas_or_a_toml_array() {
    let k1 = "11".repeat(32);
    let k2 = "22".repeat(32);
    let commas = format!("{k1}, {k2}");
    let array = format!("[\"{k1}\", \"{k2}\"]");
    for value in [commas.as_str(), array.as_str()] {
        let s = Settings::from_parts(
            None,
            "",
            env(&[
                ("ADAPTD_STATE_DIR", "/tmp/s"),
                ("ADAPTD_FLEET_TRUSTED_KEYS", value),
                ("ADAPTD_FLEET_EXCLUDE", "cam7"),
            ]),
        )
        .expect(value);
        assert_eq!(
            s.fleet.trusted_keys,
            vec![k1.clone(), k2.clone()],
            "{value}"
        );
        assert_eq!(s.fleet.exclude, vec!["cam7".to_string()]);
    }
    let s = Settings::from_parts(
        None,
        "",
        env(&[("ADAPTD_STATE_DIR", "/tmp/s"), ("ADAPTD_FLEET_EXCLUDE", "")]),
    )
    .expect("empty list");
    assert!(s.fleet.exclude.is_empty());
}
