//! The config file, layered under flags and environment variables.
//!
//! The file is TOML with the flags' names as keys (underscores for dashes), plus a
//! `[kafka]` table of librdkafka properties. It is not a second declaration of the
//! settings: each key is turned back into the flag it names and parsed by clap, with
//! the same value parser, type and bounds as on the command line. A key is used only
//! where neither a flag nor an environment variable set that setting, which gives the
//! precedence flag > environment > file > default.

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

/// Why a config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing config file {path}: {source}")]
    Toml {
        path: String,
        source: toml::de::Error,
    },
    #[error("parsing config file {path}: unknown key `{key}`")]
    UnknownKey { path: String, key: String },
    #[error("parsing config file {path}: `{key}` must be {expected}")]
    BadValue {
        path: String,
        key: String,
        expected: &'static str,
    },
}

/// The flags a config file stands for, to be placed *before* the command line's own
/// arguments (with `args_override_self`, the later occurrence wins). `command` is the
/// `run` command, `given` what the command line and environment set.
pub fn file_args(
    path: &Path,
    command: &Command,
    given: &ArgMatches,
) -> Result<Vec<OsString>, ConfigFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: shown.clone(),
        source,
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|source| ConfigFileError::Toml {
        path: shown.clone(),
        source,
    })?;
    let mut args = Vec::new();
    for (key, value) in table {
        if key == "kafka" {
            kafka_args(&shown, &value, &mut args)?;
            continue;
        }
        let Some(arg) = command
            .get_arguments()
            .find(|a| a.get_id() == key.as_str() && a.get_long().is_some() && key != "config")
        else {
            return Err(ConfigFileError::UnknownKey { path: shown, key });
        };
        let set_elsewhere = matches!(
            given.value_source(&key),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if set_elsewhere {
            continue;
        }
        let long = format!("--{}", arg.get_long().unwrap_or_default());
        if arg.get_action().takes_values() {
            let text = scalar(&value).ok_or_else(|| ConfigFileError::BadValue {
                path: shown.clone(),
                key: key.clone(),
                expected: "a string, number or boolean",
            })?;
            args.push(OsString::from(format!("{long}={text}")));
        } else {
            // A switch (`drain = true`).
            match value.as_bool() {
                Some(true) => args.push(OsString::from(long)),
                Some(false) => {}
                None => {
                    return Err(ConfigFileError::BadValue {
                        path: shown,
                        key,
                        expected: "true or false",
                    })
                }
            }
        }
    }
    Ok(args)
}

/// `[kafka]`: each property becomes a `--kafka KEY=VALUE`; flags given later override.
fn kafka_args(
    path: &str,
    value: &toml::Value,
    args: &mut Vec<OsString>,
) -> Result<(), ConfigFileError> {
    let bad = || ConfigFileError::BadValue {
        path: path.to_owned(),
        key: "kafka".into(),
        expected: "a table of librdkafka properties",
    };
    for (k, v) in value.as_table().ok_or_else(bad)? {
        let v = scalar(v).ok_or_else(bad)?;
        args.push(OsString::from(format!("--kafka={k}={v}")));
    }
    Ok(())
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}
