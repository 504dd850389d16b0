//! Value parsers shared by flags, environment variables and the config file: all three
//! go through clap, so a value is checked the same way wherever it comes from.

use std::path::PathBuf;
use std::time::Duration;

/// The longest duration any setting accepts. Durations become i64 microseconds in the
/// pipeline; a bound far below that keeps the conversion exact.
const MAX_SECS: u64 = 100 * 365 * 24 * 3600;

/// Whole seconds, e.g. `300`.
pub fn seconds(s: &str) -> Result<Duration, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected whole seconds, got `{s}`"))?;
    if n > MAX_SECS {
        return Err(format!("{n} s is more than 100 years"));
    }
    Ok(Duration::from_secs(n))
}

/// Whole milliseconds, e.g. `100`.
pub fn millis(s: &str) -> Result<Duration, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected whole milliseconds, got `{s}`"))?;
    if n / 1000 > MAX_SECS {
        return Err(format!("{n} ms is more than 100 years"));
    }
    Ok(Duration::from_millis(n))
}

/// `KEY=VALUE`, for librdkafka properties.
pub fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

/// Where rows go (and where `reconcile` reads them back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkTarget {
    /// JSON lines, one file per table, in this directory.
    File(PathBuf),
    /// A BigQuery dataset, `PROJECT.DATASET`.
    BigQuery { target: String },
}

impl std::str::FromStr for SinkTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<SinkTarget, String> {
        match s.split_once(':') {
            Some(("file", dir)) if !dir.is_empty() => Ok(SinkTarget::File(PathBuf::from(dir))),
            Some(("bigquery", target)) => {
                paydedup_sink::BigQueryConfig::parse_target(target).map_err(|e| e.to_string())?;
                Ok(SinkTarget::BigQuery {
                    target: target.to_owned(),
                })
            }
            _ => Err(format!(
                "unknown sink `{s}`: expected file:DIR or bigquery:PROJECT.DATASET"
            )),
        }
    }
}

impl std::fmt::Display for SinkTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkTarget::File(dir) => write!(f, "file:{}", dir.display()),
            SinkTarget::BigQuery { target } => write!(f, "bigquery:{target}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_whole_units_and_bounded() {
        assert_eq!(seconds("300"), Ok(Duration::from_secs(300)));
        assert_eq!(millis("100"), Ok(Duration::from_millis(100)));
        assert!(seconds("-1").is_err());
        assert!(seconds("1.5").is_err());
        assert!(seconds(&u64::MAX.to_string()).is_err());
    }

    #[test]
    fn sink_targets() {
        assert_eq!(
            "file:out".parse::<SinkTarget>(),
            Ok(SinkTarget::File("out".into()))
        );
        assert_eq!(
            "bigquery:p.d".parse::<SinkTarget>(),
            Ok(SinkTarget::BigQuery {
                target: "p.d".into()
            })
        );
        assert!("bigquery:nodot"
            .parse::<SinkTarget>()
            .unwrap_err()
            .contains("PROJECT.DATASET"));
        assert!("s3:bucket"
            .parse::<SinkTarget>()
            .unwrap_err()
            .contains("unknown sink"));
        assert_eq!(key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(key_value("=x").is_err());
    }
}
