//! The simulated population: merchants, cards, customers and their devices.
//!
//! Everything is drawn once from the seed, so the same seed gives the same world.
//! Popularity is Zipf-skewed (a few merchants and cards carry most traffic), amounts are
//! log-normal by merchant category, cards have a home country and IPs usually match it.

use std::net::{IpAddr, Ipv4Addr};

use chrono::{DateTime, Utc};
use paydedup_event::{Currency, PaymentEvent, PaymentMethod, TransactionId, SCHEMA_VERSION};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, Zipf};
use xxhash_rust::xxh3::xxh3_128_with_seed;

/// (country, currency, region) of the markets the simulator trades in, with weights.
const MARKETS: &[(&str, &str, &str, u32)] = &[
    ("US", "USD", "us-east", 30),
    ("US", "USD", "us-west", 12),
    ("DE", "EUR", "eu-central", 12),
    ("FR", "EUR", "eu-west", 8),
    ("GB", "GBP", "eu-west", 10),
    ("JP", "JPY", "ap-northeast", 8),
    ("IN", "INR", "ap-south", 6),
    ("BR", "BRL", "sa-east", 5),
    ("CA", "CAD", "us-east", 5),
    ("BH", "BHD", "me-south", 2),
    ("KR", "KRW", "ap-northeast", 2),
];

/// Merchant categories: (MCC, median amount in USD, log-normal sigma, weight).
/// 7995 (gambling) and 6051 (quasi-cash/crypto) are the high-risk ones.
const CATEGORIES: &[(u16, f64, f64, u32)] = &[
    (5411, 45.0, 0.7, 30), // grocery
    (5812, 30.0, 0.6, 20), // restaurants
    (5541, 50.0, 0.4, 10), // fuel
    (5732, 250.0, 0.9, 8), // electronics
    (4511, 420.0, 0.7, 5), // airlines
    (7011, 180.0, 0.6, 6), // hotels
    (5816, 12.0, 0.9, 12), // digital goods
    (5999, 60.0, 1.0, 6),  // misc retail
    (7995, 90.0, 1.2, 2),  // gambling (high risk)
    (6051, 300.0, 1.1, 1), // quasi-cash (high risk)
];

/// Rough value of one major unit in USD, to scale category medians per currency.
fn usd_per_unit(currency: &str) -> f64 {
    match currency {
        "EUR" => 1.08,
        "GBP" => 1.27,
        "JPY" => 0.0067,
        "INR" => 0.012,
        "BRL" => 0.19,
        "CAD" => 0.73,
        "BHD" => 2.65,
        "KRW" => 0.00073,
        _ => 1.0,
    }
}

pub struct Merchant {
    pub id: String,
    pub mcc: u16,
    pub amount: LogNormal<f64>,
    pub currency: Currency,
    pub region: &'static str,
}

pub struct Card {
    pub fingerprint: String,
    pub country: &'static str,
    pub customer: usize,
}

pub struct World {
    pub merchants: Vec<Merchant>,
    pub cards: Vec<Card>,
    /// Devices per customer (1–3).
    pub devices: Vec<u8>,
    merchant_zipf: Zipf<f64>,
    card_zipf: Zipf<f64>,
}

fn weighted<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T], weight: impl Fn(&T) -> u32) -> &'a T {
    let total: u32 = items.iter().map(&weight).sum();
    let mut pick = rng.gen_range(0..total);
    for item in items {
        let w = weight(item);
        if pick < w {
            return item;
        }
        pick -= w;
    }
    &items[items.len() - 1]
}

impl World {
    pub fn new(rng: &mut ChaCha8Rng, seed: u64, merchants: usize, cards: usize) -> World {
        let merchants: Vec<Merchant> = (0..merchants)
            .map(|i| {
                let (_, currency, region, _) = *weighted(rng, MARKETS, |m| m.3);
                let (mcc, median_usd, sigma, _) = *weighted(rng, CATEGORIES, |c| c.3);
                let currency =
                    Currency::from_code(currency).expect("market currencies are ISO 4217");
                let median = median_usd / usd_per_unit(currency.code());
                Merchant {
                    id: format!("m-{i:05}"),
                    mcc,
                    amount: LogNormal::new(median.ln(), sigma).expect("sigma is positive"),
                    currency,
                    region,
                }
            })
            .collect();
        let customers = cards.div_ceil(2).max(1);
        let cards: Vec<Card> = (0..cards)
            .map(|i| Card {
                fingerprint: format!(
                    "{:032x}",
                    xxh3_128_with_seed(&(i as u64).to_le_bytes(), seed)
                ),
                country: weighted(rng, MARKETS, |m| m.3).0,
                customer: i % customers,
            })
            .collect();
        let devices = (0..customers).map(|_| rng.gen_range(1..=3)).collect();
        World {
            merchant_zipf: Zipf::new(merchants.len() as u64, 1.07).expect("n > 0"),
            card_zipf: Zipf::new(cards.len() as u64, 1.03).expect("n > 0"),
            merchants,
            cards,
            devices,
        }
    }

    pub fn pick_card(&self, rng: &mut ChaCha8Rng) -> usize {
        (self.card_zipf.sample(rng) as usize - 1).min(self.cards.len() - 1)
    }

    pub fn pick_merchant(&self, rng: &mut ChaCha8Rng) -> usize {
        (self.merchant_zipf.sample(rng) as usize - 1).min(self.merchants.len() - 1)
    }

    /// A random country other than `not`.
    pub fn other_country(rng: &mut ChaCha8Rng, not: &str) -> &'static str {
        loop {
            let c = MARKETS[rng.gen_range(0..MARKETS.len())].0;
            if c != not {
                return c;
            }
        }
    }

    /// An IPv4 address in a block that stands for `country` (documentation-style
    /// synthetic ranges: the first octet encodes the country).
    pub fn ip_in(rng: &mut ChaCha8Rng, country: &str) -> IpAddr {
        let idx = MARKETS.iter().position(|m| m.0 == country).unwrap_or(0) as u8;
        IpAddr::V4(Ipv4Addr::new(
            20 + idx,
            rng.gen(),
            rng.gen(),
            rng.gen_range(1..255),
        ))
    }

    /// A realistic payment by `card` at `merchant`.
    pub fn payment(
        &self,
        rng: &mut ChaCha8Rng,
        id: TransactionId,
        event_time: DateTime<Utc>,
        card: usize,
        merchant: usize,
        ip_country: Option<&'static str>,
    ) -> PaymentEvent {
        let m = &self.merchants[merchant];
        let c = &self.cards[card];
        let scale = 10_f64.powi(i32::from(m.currency.exponent()));
        let major = m.amount.sample(rng);
        let amount_minor = ((major * scale).round() as i64).clamp(1, m.currency.max_amount_minor());
        let ip_country = ip_country.unwrap_or(if rng.gen_bool(0.96) {
            c.country
        } else {
            World::other_country(rng, c.country)
        });
        let devices = self.devices[c.customer];
        // Mostly a known device; sometimes a new one (device ids past the customer's set).
        let device = if rng.gen_bool(0.02) {
            rng.gen_range(devices..devices + 50)
        } else {
            rng.gen_range(0..devices)
        };
        let method = match rng.gen_range(0..100) {
            0..=79 => PaymentMethod::Card,
            80..=94 => PaymentMethod::Wallet,
            _ => PaymentMethod::BankTransfer,
        };
        PaymentEvent {
            transaction_id: id,
            event_time,
            amount_minor,
            currency: m.currency,
            merchant_id: m.id.clone().into(),
            merchant_category: m.mcc,
            card_fingerprint: c.fingerprint.clone().into(),
            card_country: c.country.to_owned().into(),
            customer_id: format!("c-{:06}", c.customer).into(),
            ip_address: World::ip_in(rng, ip_country),
            ip_country: ip_country.to_owned().into(),
            device_id: format!("d-{:06}-{device}", c.customer).into(),
            region: m.region.to_owned().into(),
            payment_method: method,
            schema_version: SCHEMA_VERSION,
        }
    }
}
