//! Fraud thresholds and weights. Defaults are sensible for card-present and e-commerce
//! retail traffic; tune them per portfolio in a TOML file (`--fraud-config`).

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FraudConfig {
    /// Payments on one card within 10 minutes (this one included) that count as velocity.
    pub velocity_10m: u32,
    /// Payments on one card within 1 hour that count as velocity.
    pub velocity_1h: u32,
    /// Standard deviations above the card's running mean (per currency) that count as
    /// an amount anomaly.
    pub amount_zscore: f64,
    /// History the card needs in a currency before amounts are judged.
    pub amount_min_history: u64,
    /// A change of IP country on one card within this many seconds is impossible travel.
    pub impossible_travel_secs: i64,
    /// Merchant category codes considered high risk (gambling, quasi-cash, …).
    pub high_risk_mcc: Vec<u16>,
    /// Score at or above which a payment is flagged.
    pub flag_threshold: u8,
    pub weights: Weights,
}

/// Points each reason adds to the score (capped at 100).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    pub velocity_10m: u8,
    pub velocity_1h: u8,
    pub amount_anomaly: u8,
    pub geo_mismatch: u8,
    pub impossible_travel: u8,
    pub new_device: u8,
    pub high_risk_mcc: u8,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            velocity_10m: 30,
            velocity_1h: 15,
            amount_anomaly: 25,
            geo_mismatch: 20,
            impossible_travel: 40,
            new_device: 10,
            high_risk_mcc: 15,
        }
    }
}

impl Default for FraudConfig {
    fn default() -> Self {
        FraudConfig {
            velocity_10m: 5,
            velocity_1h: 12,
            amount_zscore: 4.0,
            amount_min_history: 5,
            impossible_travel_secs: 2 * 3600,
            high_risk_mcc: vec![4829, 5967, 6051, 7995],
            flag_threshold: 50,
            weights: Weights::default(),
        }
    }
}

#[derive(Debug, Error)]
pub enum FraudConfigError {
    #[error("reading fraud config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing fraud config {path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("invalid fraud config: {0}")]
    Invalid(String),
}

impl FraudConfig {
    pub fn from_toml(text: &str, path: &str) -> Result<FraudConfig, FraudConfigError> {
        let cfg: FraudConfig = toml::from_str(text).map_err(|source| FraudConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &std::path::Path) -> Result<FraudConfig, FraudConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| FraudConfigError::Read {
            path: p.clone(),
            source,
        })?;
        FraudConfig::from_toml(&text, &p)
    }

    pub fn validate(&self) -> Result<(), FraudConfigError> {
        if self.velocity_10m == 0 || self.velocity_1h == 0 {
            return Err(FraudConfigError::Invalid(
                "velocity thresholds must be positive".into(),
            ));
        }
        if !(self.amount_zscore > 0.0 && self.amount_zscore.is_finite()) {
            return Err(FraudConfigError::Invalid(
                "amount_zscore must be positive".into(),
            ));
        }
        if self.impossible_travel_secs <= 0 {
            return Err(FraudConfigError::Invalid(
                "impossible_travel_secs must be positive".into(),
            ));
        }
        if self.flag_threshold == 0 || self.flag_threshold > 100 {
            return Err(FraudConfigError::Invalid(
                "flag_threshold must be 1..=100".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_toml_keeps_defaults() {
        let cfg =
            FraudConfig::from_toml("velocity_10m = 3\n[weights]\nnew_device = 5\n", "t").unwrap();
        assert_eq!(cfg.velocity_10m, 3);
        assert_eq!(cfg.weights.new_device, 5);
        assert_eq!(cfg.velocity_1h, FraudConfig::default().velocity_1h);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(FraudConfig::from_toml("velocity_10min = 3", "t").is_err());
        assert!(FraudConfig::from_toml("flag_threshold = 0", "t").is_err());
        assert!(FraudConfig::from_toml("amount_zscore = -1.0", "t").is_err());
    }
}
