//! `paydedup-event`: the payment event and everything about its bytes.
//!
//! A tour of the crate:
//! - [`payment`]: [`PaymentEvent`], the one record type that flows through paydedup, and
//!   its newtypes. Money is an integer in minor units plus a [`Currency`]; never a float.
//! - [`card`]: [`CardFingerprint`], the hash a payment carries in place of its card.
//! - [`currency`]: the ISO 4217 currencies paydedup accepts, with their minor-unit exponent.
//! - [`decode`]: bytes → [`PaymentEvent`], or a [`ValidationError`] with a stable machine
//!   code. No input, however broken, panics.
//! - [`error`]: [`ValidationError`] and its codes.
//! - [`canonical`]: the canonical encoding and the content hash used for conflict detection.

pub mod canonical;
pub mod card;
pub mod currency;
pub mod decode;
pub mod error;
pub mod hex;
pub mod payment;

pub use canonical::{content_hash, encode_json, ContentHash};
pub use card::CardFingerprint;
pub use currency::{Currency, MajorAmount};
pub use decode::{decode, DecodeLimits};
pub use error::ValidationError;
pub use payment::{PaymentEvent, PaymentMethod, SmolStr, TransactionId, SCHEMA_VERSION};
