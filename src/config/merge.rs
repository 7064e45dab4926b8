//! Step 2 of 3, from texts to one raw configuration: the embedded defaults, a config file merged
//! over them, then `ADAPTD_<SECTION>_<KEY>` environment overrides. The defaults name every key,
//! so a key they lack, in the file or the environment, is an error.

use super::raw::RawConfig;
use super::{ConfigError, DEFAULT_TOML};

/// Environment variables with the `ADAPTD_` prefix that are not config keys.
const RESERVED_ENV: &[&str] = &["ADAPTD_LOG", "ADAPTD_CONFIG"];

/// The defaults, then `text` (from `origin`) if any, then `env`, deserialized.
pub(super) fn merged(
    text: Option<&str>,
    origin: &str,
    env: impl Iterator<Item = (String, String)>,
) -> Result<RawConfig, ConfigError> {
    let mut table = parse_table(DEFAULT_TOML, "defaults")?;
    if let Some(text) = text {
        merge(&mut table, parse_table(text, origin)?, origin)?;
    }
    apply_env(&mut table, env)?;
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            origin: "merged configuration".into(),
            message: e.to_string(),
        })
}

fn parse_table(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        origin: origin.to_string(),
        message: e.to_string(),
    })
}

/// Merges `over` into `base`; every key of `over` must exist in `base` (sources excepted).
fn merge(base: &mut toml::Table, over: toml::Table, origin: &str) -> Result<(), ConfigError> {
    for (section, value) in over {
        if section == "sources" {
            base.insert(section, value);
            continue;
        }
        let Some(toml::Value::Table(base_section)) = base.get_mut(&section) else {
            return Err(ConfigError::UnknownKey {
                key: section,
                origin: origin.to_string(),
            });
        };
        let toml::Value::Table(keys) = value else {
            return Err(ConfigError::Parse {
                origin: origin.to_string(),
                message: format!("[{section}] must be a table"),
            });
        };
        for (key, v) in keys {
            if !base_section.contains_key(&key) {
                return Err(ConfigError::UnknownKey {
                    key: format!("{section}.{key}"),
                    origin: origin.to_string(),
                });
            }
            base_section.insert(key, v);
        }
    }
    Ok(())
}

/// Applies `ADAPTD_<SECTION>_<KEY>` variables; values take the type of the default (lists:
/// comma-separated strings or a TOML array).
fn apply_env(
    table: &mut toml::Table,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix("ADAPTD_") else {
            continue;
        };
        if RESERVED_ENV.contains(&name.as_str()) {
            continue;
        }
        let lower = rest.to_ascii_lowercase();
        let unknown = || ConfigError::UnknownKey {
            key: name.clone(),
            origin: "environment".into(),
        };
        let (section, key) = lower.split_once('_').ok_or_else(unknown)?;
        let Some(toml::Value::Table(sec)) = table.get_mut(section) else {
            return Err(unknown());
        };
        let Some(current) = sec.get(key) else {
            return Err(unknown());
        };
        let parsed = match current {
            toml::Value::String(_) => toml::Value::String(value),
            // A list takes `a,b,c` (as daemons take lists in the environment, and what fits a
            // systemd `Environment=` line) or a TOML array `["a", "b"]`.
            toml::Value::Array(_) if !value.trim_start().starts_with('[') => toml::Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(|v| toml::Value::String(v.to_string()))
                    .collect(),
            ),
            _ => {
                let doc = format!("v = {value}");
                let t = parse_table(&doc, &name)?;
                t.get("v").cloned().ok_or_else(unknown)?
            }
        };
        sec.insert(key.to_string(), parsed);
    }
    Ok(())
}
