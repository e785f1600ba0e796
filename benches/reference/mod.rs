//! The reference event that every jetring performance figure is measured with, and the
//! envelope of the known design, so that the benches and `examples/e2e.rs` all encode the same
//! bytes.
//!
//! The event is one `priceEstimate` of chain 1 with a UUID request id; its envelope is about
//! 390 bytes. Included with `#[path]` by `benches/publish.rs`, the examples, `tests/alloc.rs`
//! and `tests/stress.rs`; not a bench target of its own.

// Each includer uses a different subset.
#![allow(dead_code)]

use serde::Serialize;

/// Event name: the last token of the subject.
pub const NAME: &str = "priceEstimate";

/// Chain id: the second token of the subject.
pub const CHAIN_ID: u64 = 1;

/// Subject prefix of the known design and of jetring's default configuration.
pub const PREFIX: &str = "event";

/// The subject every reference event goes to.
pub const SUBJECT: &str = "event.1.priceEstimate";

/// What jetring writes in front of the event name.
pub const SUBJECT_HEAD: &str = "event.1.";

/// A 36-character UUID request id.
pub const REQUEST_ID: &str = "4f1c7a5e-3b7d-4e55-9d0a-0c8f5f0e6a11";

/// The body of one `priceEstimate` event, with the keys in the order the wire shows them.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PriceEstimate<'a> {
    pub estimator: &'a str,
    pub sell_token: &'a str,
    pub buy_token: &'a str,
    pub in_amount: &'a str,
    pub out_amount: &'a str,
    pub kind: &'a str,
    pub gas: u64,
    pub elapsed_ms: f64,
    pub verified: bool,
}

/// The reference body.
pub const BODY: PriceEstimate<'static> = PriceEstimate {
    estimator: "Baseline",
    sell_token: "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2",
    buy_token: "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48",
    in_amount: "10000000000000000000000",
    out_amount: "38412345678901234567890",
    kind: "sell",
    gas: 186_532,
    elapsed_ms: 12.734512,
    verified: true,
};

/// The known design's envelope: serialized with `serde_json`, in this key order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedEnvelope<'a, T: Serialize> {
    pub version: &'static str,
    pub timestamp: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    pub body: &'a T,
}

/// The reference envelope exactly as jetring puts it on the wire, with a fixed timestamp
/// (2026-05-22T12:00:00.123Z).
pub fn jetring_payload() -> Vec<u8> {
    let (subject, payload) = jetring::testing::encode_envelope(
        SUBJECT_HEAD,
        NAME,
        1_779_451_200_123,
        Some(REQUEST_ID),
        &BODY,
    )
    .expect("the reference event serializes");
    assert_eq!(subject, SUBJECT);
    payload
}

/// The reference envelope as the known design writes it, with the same fixed timestamp.
pub fn seed_payload() -> Vec<u8> {
    serde_json::to_vec(&SeedEnvelope {
        version: "v1",
        timestamp: "2026-05-22T12:00:00.123Z",
        request_id: Some(REQUEST_ID),
        body: &BODY,
    })
    .expect("the reference event serializes")
}
