//! The payment event.

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
pub use smol_str::SmolStr;

use crate::{CardFingerprint, Currency};

/// The only schema version this build understands. A producer that bumps it without a
/// matching paydedup release gets `unsupported_schema_version`, not a silent guess.
pub const SCHEMA_VERSION: i64 = 1;

/// The idempotency key: two records with the same id are the same payment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionId(SmolStr);

impl TransactionId {
    /// Longest accepted id, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Wraps an id that [`crate::decode`] (or a trusted producer) already validated.
    pub fn new_unchecked(id: impl Into<SmolStr>) -> Self {
        TransactionId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the customer paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentMethod {
    Card,
    Wallet,
    BankTransfer,
}

impl PaymentMethod {
    pub const ALL: [PaymentMethod; 3] = [
        PaymentMethod::Card,
        PaymentMethod::Wallet,
        PaymentMethod::BankTransfer,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            PaymentMethod::Card => "card",
            PaymentMethod::Wallet => "wallet",
            PaymentMethod::BankTransfer => "bank_transfer",
        }
    }

    pub fn parse(s: &str) -> Option<PaymentMethod> {
        PaymentMethod::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// A validated payment event. Constructing one by hand is allowed (the simulator does);
/// [`crate::decode`] is the only way bytes from the outside become one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentEvent {
    pub transaction_id: TransactionId,
    /// When the payment happened, UTC, microsecond precision.
    pub event_time: DateTime<Utc>,
    /// Amount in the currency's minor units (cents, yen, fils); always > 0.
    pub amount_minor: i64,
    pub currency: Currency,
    pub merchant_id: SmolStr,
    /// ISO 18245 merchant category code, 0000–9999.
    pub merchant_category: u16,
    /// A hash of the card, lowercase hex. Never a card number.
    pub card_fingerprint: CardFingerprint,
    /// ISO 3166-1 alpha-2 country that issued the card.
    pub card_country: SmolStr,
    pub customer_id: SmolStr,
    pub ip_address: IpAddr,
    /// ISO 3166-1 alpha-2 country the IP address geolocates to.
    pub ip_country: SmolStr,
    pub device_id: SmolStr,
    /// The processing region (for example `eu-west`).
    pub region: SmolStr,
    pub payment_method: PaymentMethod,
    pub schema_version: i64,
}

impl PaymentEvent {
    /// Event time as microseconds since the Unix epoch (the unit state and BigQuery use).
    pub fn event_time_micros(&self) -> i64 {
        self.event_time.timestamp_micros()
    }
}
