//! One test per error code, plus property tests: encode → decode is the identity, and
//! no byte string panics the decoder.

use chrono::{Duration, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::{content_hash, encode_json};

fn reference() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
}

fn valid() -> Value {
    json!({
        "transaction_id": "tx-0001",
        "event_time": "2026-11-23T11:59:00.123456Z",
        "amount_minor": 1999,
        "currency": "USD",
        "merchant_id": "m-42",
        "merchant_category": "5411",
        "card_fingerprint": "9f86d081884c7d659a2feaa0c55ad015",
        "card_country": "US",
        "customer_id": "c-7",
        "ip_address": "203.0.113.7",
        "ip_country": "US",
        "device_id": "d-1",
        "region": "us-east",
        "payment_method": "card",
        "schema_version": 1
    })
}

fn decode_value(v: &Value) -> Result<PaymentEvent, ValidationError> {
    decode(
        &serde_json::to_vec(v).unwrap(),
        reference(),
        &DecodeLimits::default(),
    )
}

fn code_with(field: &str, value: Value) -> &'static str {
    let mut v = valid();
    v[field] = value;
    decode_value(&v).unwrap_err().code()
}

/// Whether a valid event with `field` set to `value` still decodes.
fn accepted_with(field: &str, value: Value) -> bool {
    let mut v = valid();
    v[field] = value;
    decode_value(&v).is_ok()
}

fn code_without(field: &str) -> &'static str {
    let mut v = valid();
    v.as_object_mut().unwrap().remove(field);
    decode_value(&v).unwrap_err().code()
}

#[test]
fn valid_event_decodes() {
    let e = decode_value(&valid()).unwrap();
    assert_eq!(e.transaction_id.as_str(), "tx-0001");
    assert_eq!(e.amount_minor, 1999);
    assert_eq!(e.currency.code(), "USD");
    assert_eq!(e.merchant_category, 5411);
    assert_eq!(e.event_time_micros() % 1_000_000, 123_456);
}

#[test]
fn payload_too_large() {
    let big = vec![b' '; DecodeLimits::default().max_payload_bytes + 1];
    let err = decode(&big, reference(), &DecodeLimits::default()).unwrap_err();
    assert_eq!(err.code(), "payload_too_large");
}

#[test]
fn malformed_json() {
    for bad in [&b"{"[..], b"not json", b"\xff\xfe\x00", b"", b"{\"a\":1,}"] {
        let err = decode(bad, reference(), &DecodeLimits::default()).unwrap_err();
        assert_eq!(err.code(), "malformed_json", "{bad:?}");
    }
}

#[test]
fn deeply_nested_input_is_malformed_not_a_stack_overflow() {
    let deep = "[".repeat(60_000);
    let err = decode(deep.as_bytes(), reference(), &DecodeLimits::default()).unwrap_err();
    assert_eq!(err.code(), "malformed_json");
}

#[test]
fn not_an_object() {
    for bad in ["[1,2]", "42", "\"x\"", "null"] {
        let err = decode(bad.as_bytes(), reference(), &DecodeLimits::default()).unwrap_err();
        assert_eq!(err.code(), "not_an_object", "{bad}");
    }
}

#[test]
fn missing_field_for_every_field() {
    for field in FIELDS {
        assert_eq!(code_without(field), "missing_field", "{field}");
        assert_eq!(code_with(field, Value::Null), "missing_field", "{field}");
    }
    let mut v = valid();
    v.as_object_mut().unwrap().remove("currency");
    assert_eq!(
        decode_value(&v).unwrap_err().field(),
        Some("currency"),
        "the error names the field"
    );
}

#[test]
fn wrong_type() {
    assert_eq!(code_with("amount_minor", json!("1999")), "wrong_type");
    assert_eq!(code_with("amount_minor", json!(19.99)), "wrong_type");
    assert_eq!(code_with("currency", json!(840)), "wrong_type");
    assert_eq!(code_with("schema_version", json!("1")), "wrong_type");
    assert_eq!(code_with("merchant_id", json!({"id": 1})), "wrong_type");
}

#[test]
fn unsupported_schema_version() {
    assert_eq!(
        code_with("schema_version", json!(2)),
        "unsupported_schema_version"
    );
    // A v2 record with a different shape is reported by version, not by missing field.
    let mut v = valid();
    v["schema_version"] = json!(2);
    v.as_object_mut().unwrap().remove("currency");
    assert_eq!(
        decode_value(&v).unwrap_err().code(),
        "unsupported_schema_version"
    );
}

#[test]
fn id_rules() {
    assert_eq!(code_with("transaction_id", json!("")), "empty_field");
    assert_eq!(
        code_with("transaction_id", json!("x".repeat(65))),
        "id_too_long"
    );
    assert!(accepted_with("transaction_id", json!("x".repeat(64))));
    assert_eq!(
        code_with("transaction_id", json!("tx 1")),
        "invalid_characters"
    );
}

#[test]
fn timestamp_rules() {
    assert_eq!(
        code_with("event_time", json!("yesterday")),
        "invalid_timestamp"
    );
    assert_eq!(
        code_with("event_time", json!("1999-12-31T23:59:59Z")),
        "event_time_too_old"
    );
    assert_eq!(
        code_with("event_time", json!("2026-11-23T12:10:01Z")),
        "event_time_in_future"
    );
    assert_eq!(
        code_with("event_time", json!("1999-12-31T23:59:59.999999Z")),
        "event_time_too_old"
    );
    // Through chrono (an offset): the floor is an instant, not a local date.
    assert_eq!(
        code_with("event_time", json!("2000-01-01T00:59:59+01:00")),
        "event_time_too_old"
    );
    // The floor itself is accepted (a fraction below a microsecond is truncated).
    let mut v = valid();
    v["event_time"] = json!("2000-01-01T00:00:00.0000009Z");
    assert_eq!(
        decode_value(&v).unwrap().event_time,
        Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap()
    );
    // Exactly at the tolerance is accepted.
    v["event_time"] = json!("2026-11-23T12:10:00Z");
    assert!(decode_value(&v).is_ok());
    // An offset is converted to UTC.
    v["event_time"] = json!("2026-11-23T13:00:00+02:00");
    assert_eq!(
        decode_value(&v).unwrap().event_time,
        Utc.with_ymd_and_hms(2026, 11, 23, 11, 0, 0).unwrap()
    );
}

#[test]
fn money_rules() {
    assert_eq!(code_with("currency", json!("XYZ")), "unknown_currency");
    assert_eq!(code_with("amount_minor", json!(0)), "non_positive_amount");
    assert_eq!(
        code_with("amount_minor", json!(-500)),
        "non_positive_amount"
    );
    assert_eq!(
        code_with("amount_minor", json!(100_000_000_001_i64)),
        "amount_too_large"
    );
    assert_eq!(
        code_with("amount_minor", json!(u64::MAX)),
        "amount_too_large"
    );
    // JPY has no minor unit, so its ceiling in minor units is lower.
    let mut v = valid();
    v["currency"] = json!("JPY");
    v["amount_minor"] = json!(1_000_000_001_i64);
    assert_eq!(decode_value(&v).unwrap_err().code(), "amount_too_large");
}

#[test]
fn merchant_category_rules() {
    for bad in ["541", "54111", "54a1", ""] {
        assert_eq!(
            code_with("merchant_category", json!(bad)),
            "invalid_merchant_category"
        );
    }
}

#[test]
fn card_rules_never_echo_the_number() {
    let pan = "4111111111111111";
    let mut v = valid();
    v["card_fingerprint"] = json!(pan);
    let err = decode_value(&v).unwrap_err();
    assert_eq!(err.code(), "card_number_detected");
    assert!(!err.to_string().contains(pan));
    assert!(!format!("{err:?}").contains(pan));

    assert_eq!(code_with("customer_id", json!(pan)), "card_number_detected");
    // Spaced, dashed, or inside a longer value: still a card number.
    for spelled in [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "cust 4111111111111111",
        // The shortest card numbers: 13 digits.
        "4222222222222",
        "x4222-2222-22222",
    ] {
        assert_eq!(
            code_with("merchant_id", json!(spelled)),
            "card_number_detected",
            "{spelled}"
        );
    }
    // Digit runs that fail Luhn, or are too short, are ordinary ids.
    assert!(decode_value(&{
        let mut v = valid();
        v["merchant_id"] = json!("m-4111111111111112");
        v["device_id"] = json!("d-123456789012");
        v
    })
    .is_ok());
    assert_eq!(
        code_with("card_fingerprint", json!("not-hex!")),
        "invalid_card_fingerprint"
    );
    // Lowercase hex only: the same digits in upper case are not a fingerprint.
    assert_eq!(
        code_with("card_fingerprint", json!("AB".repeat(16))),
        "invalid_card_fingerprint"
    );
    assert!(accepted_with("card_fingerprint", json!("ab09".repeat(8))));
    // A PAN in a wrongly typed field is also not echoed by the JSON error.
    let raw = format!("{{\"card_fingerprint\": {pan}x}}");
    let err = decode(raw.as_bytes(), reference(), &DecodeLimits::default()).unwrap_err();
    assert!(!err.to_string().contains(pan));
}

#[test]
fn country_ip_method_and_text_rules() {
    assert_eq!(code_with("card_country", json!("usa")), "invalid_country");
    assert_eq!(code_with("ip_country", json!("u")), "invalid_country");
    assert_eq!(
        code_with("ip_address", json!("999.1.1.1")),
        "invalid_ip_address"
    );
    assert!(accepted_with("ip_address", json!("2001:db8::1")));
    assert_eq!(
        code_with("payment_method", json!("cash")),
        "invalid_payment_method"
    );
    assert_eq!(code_with("merchant_id", json!("")), "empty_field");
    assert_eq!(
        code_with("device_id", json!("d".repeat(65))),
        "field_too_long"
    );
    assert_eq!(code_with("region", json!("eu\nwest")), "invalid_characters");
    // Control characters by both checks: ASCII text (bytes) and other text (chars).
    for text in [
        "eu\u{7f}west",
        "eu\u{1}",
        "é\u{7f}",
        "é\u{85}west",
        "\u{9f}",
    ] {
        assert_eq!(
            code_with("device_id", json!(text)),
            "invalid_characters",
            "{text:?}"
        );
    }
    assert!(accepted_with("region", json!("été-ouest")));
}

#[test]
fn duplicated_key_is_malformed() {
    let mut raw = serde_json::to_string(&valid()).unwrap();
    raw.insert_str(1, "\"region\":\"x\",");
    let err = decode(raw.as_bytes(), reference(), &DecodeLimits::default()).unwrap_err();
    assert_eq!(err.code(), "malformed_json");
}

#[test]
fn unknown_fields_are_ignored_for_forward_compatibility() {
    let mut v = valid();
    v["new_field"] = json!("x");
    assert!(decode_value(&v).is_ok());
}

#[test]
fn content_hash_ignores_order_whitespace_and_event_time() {
    let a = decode_value(&valid()).unwrap();
    let reordered = r#"{ "schema_version":1, "payment_method":"card","region":"us-east",
        "device_id":"d-1","ip_country":"US","ip_address":"203.0.113.7","customer_id":"c-7",
        "card_country":"US","card_fingerprint":"9f86d081884c7d659a2feaa0c55ad015",
        "merchant_category":"5411","merchant_id":"m-42","currency":"USD","amount_minor":1999,
        "event_time":"2026-11-23T11:59:30Z","transaction_id":"tx-0001" }"#;
    let b = decode(reordered.as_bytes(), reference(), &DecodeLimits::default()).unwrap();
    assert_eq!(content_hash(&a), content_hash(&b));

    let mut changed = valid();
    changed["amount_minor"] = json!(2000);
    let c = decode_value(&changed).unwrap();
    assert_ne!(content_hash(&a), content_hash(&c));
}

fn arb_event() -> impl Strategy<Value = PaymentEvent> {
    let ids = "[A-Za-z0-9_.:-]{1,64}";
    let text = "[a-z][a-z0-9 -]{0,39}";
    (
        ids,
        946_684_800_000_000_i64..1_795_000_000_000_000,
        1_i64..=100_000_000_000,
        prop::sample::select(Currency::all().collect::<Vec<_>>()),
        (text, 0_u16..=9999, "[0-9a-f]{32}", "[A-Z]{2}"),
        (text, any::<[u8; 4]>(), "[A-Z]{2}", text, text),
        prop::sample::select(PaymentMethod::ALL.to_vec()),
    )
        .prop_map(
            |(
                id,
                micros,
                amount,
                currency,
                (merchant, mcc, card, cc),
                (cust, ip, ipc, dev, region),
                method,
            )| {
                PaymentEvent {
                    transaction_id: TransactionId::new_unchecked(id),
                    event_time: Utc.timestamp_micros(micros).unwrap(),
                    amount_minor: amount.min(currency.max_amount_minor()),
                    currency,
                    merchant_id: merchant.into(),
                    merchant_category: mcc,
                    card_fingerprint: card.into(),
                    card_country: cc.into(),
                    customer_id: cust.into(),
                    ip_address: IpAddr::from(ip),
                    ip_country: ipc.into(),
                    device_id: dev.into(),
                    region: region.into(),
                    payment_method: method,
                    schema_version: SCHEMA_VERSION,
                }
            },
        )
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(event in arb_event()) {
        let bytes = encode_json(&event);
        let limits = DecodeLimits { future_tolerance: Duration::days(36_500), ..DecodeLimits::default() };
        let decoded = decode(&bytes, reference(), &limits);
        prop_assert_eq!(decoded, Ok(event));
    }

    #[test]
    fn any_bytes_decode_or_error_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes, reference(), &DecodeLimits::default());
    }

    /// The flat scanner's invariant (see `flat`): whatever it reads, serde reads the same
    /// way. Valid records, records with one byte changed, and cut records.
    #[test]
    fn the_flat_scanner_agrees_with_serde(event in arb_event(), cut in 0_usize..400, byte in any::<u8>()) {
        let whole = encode_json(&event);
        let mut changed = whole.clone();
        let i = cut % changed.len();
        changed[i] = byte;
        let mut pretty = serde_json::to_vec_pretty(&serde_json::from_slice::<Value>(&whole).unwrap()).unwrap();
        pretty.extend_from_slice(b" \n");
        // Spaces between tokens (the scanner reads those), and a changed byte among them.
        let spaced = String::from_utf8(whole.clone()).unwrap().replace("\",\"", "\" , \"").replace("\":", "\" : ").into_bytes();
        let mut spaced_changed = spaced.clone();
        let j = cut % spaced_changed.len();
        spaced_changed[j] = byte;
        // An integer field's first digit turned into a sign, or the whole value into -0.
        let amount = format!("\"amount_minor\":{}", event.amount_minor);
        let whole_text = String::from_utf8(whole.clone()).unwrap();
        let signed = whole_text.replace(&amount, &format!("\"amount_minor\":-{}", &amount[15..]));
        let minus_zero = whole_text.replace(&amount, "\"amount_minor\":-0");
        for bytes in [&whole[..], &changed[..], &whole[..i], &pretty[..], &spaced[..], &spaced_changed[..], signed.as_bytes(), minus_zero.as_bytes()] {
            let ours = super::flat::scan(bytes);
            if let Some(ours) = ours {
                let serde: Wire<'_> = serde_json::from_slice(bytes)
                    .map_err(|e| TestCaseError::fail(format!("serde refused what the scanner read: {e}")))?;
                prop_assert_eq!(format!("{ours:?}"), format!("{serde:?}"));
            }
        }
        // The producers' own encoding is always flat, spaced or not.
        prop_assert!(super::flat::scan(&whole).is_some());
        prop_assert!(super::flat::scan(&spaced).is_some());
    }

    #[test]
    fn mutated_valid_json_never_panics(cut in 0_usize..400, byte in any::<u8>()) {
        let mut bytes = serde_json::to_vec(&valid()).unwrap();
        let i = cut % bytes.len();
        bytes[i] = byte;
        let _ = decode(&bytes, reference(), &DecodeLimits::default());
        bytes.truncate(i);
        prop_assert!(decode(&bytes, reference(), &DecodeLimits::default()).is_err());
    }
}

/// Found by fuzzing (fuzz/repro/schema_version_echo): the message of an unsupported
/// schema_version echoed the value, so a card number typed into that field reached
/// `processing_errors.error_message`. The value stays in the error, not in its text.
#[test]
fn an_unsupported_schema_version_is_not_echoed_into_the_message() {
    let mut v = valid();
    v["schema_version"] = json!(4111111111111111_i64);
    let e = decode_value(&v).unwrap_err();
    assert_eq!(e.code(), "unsupported_schema_version");
    assert!(!e.to_string().contains("4111111111111111"), "{e}");
}

/// Found by fuzzing (fuzz/repro/year_10000_roundtrip): an offset that moves an event
/// time past 9999-12-31 UTC was accepted (with a reference time that far out), and no
/// warehouse TIMESTAMP holds it. Years outside 0001–9999 UTC are invalid at decode.
#[test]
fn an_event_time_past_year_9999_utc_is_invalid() {
    let far = Utc.with_ymd_and_hms(9999, 12, 31, 23, 55, 0).unwrap();
    let mut v = valid();
    v["event_time"] = json!("9999-12-31T23:59:59-00:05");
    let e = decode(
        &serde_json::to_vec(&v).unwrap(),
        far,
        &DecodeLimits::default(),
    )
    .unwrap_err();
    assert_eq!(e.code(), "invalid_timestamp");
}

/// The branch-free id byte check accepts exactly the bytes the rule names.
#[test]
fn an_id_byte_is_a_letter_a_digit_or_one_of_four_marks() {
    for b in 0..=u8::MAX {
        let rule = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':');
        assert_eq!(super::is_id_byte(b), rule, "byte {b:#04x}");
    }
}
