//! Fuzzes the envelope encoder against serde_json.
//!
//! From the input it builds a body (a tree of maps and sequences holding nasty strings,
//! integers at their limits and non-finite floats, and the rest of serde's data model:
//! structs, enum variants, bytes, chars, 128-bit integers, 32-bit floats, `collect_str`), a
//! subject head, an event name, a request id and a timestamp in milliseconds, and encodes
//! them with
//! [`jetring::testing::encode_envelope`]. It checks that:
//!
//! - the subject is the head followed by the name;
//! - the payload is byte for byte what serde_json writes for a reference envelope struct
//!   `{version, timestamp, requestId?, body}`;
//! - the payload parses, with serde_json and with simd-json, to the reference's
//!   `serde_json::Value`;
//! - the timestamp is chrono's RFC 3339 text with milliseconds and `Z`;
//! - a body that serde_json refuses (a map with non-string keys, a value whose `Serialize`
//!   fails) is an `Err` from jetring too, never a panic.
//!
//! The same checks run a second time with the body converted to a `serde_json::Value`, the
//! type most services publish.

#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use chrono::{DateTime, SecondsFormat};
use libfuzzer_sys::fuzz_target;
use serde::ser::{
    Error as _, SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant,
    SerializeTupleStruct, SerializeTupleVariant,
};
use serde::{Serialize, Serializer};
use serde_json::Value;

/// Deepest nesting of maps and sequences in a body. Far below the recursion limits of the
/// parsers, so that a parse failure means a malformed payload.
const MAX_DEPTH: usize = 24;

/// Most elements of one map or sequence.
const MAX_WIDTH: usize = 8;

/// Last millisecond with a four-digit year: 9999-12-31T23:59:59.999Z.
const MAX_MILLIS: u64 = 253_402_300_799_999;

/// Characters that JSON encoders get wrong: quotes, backslashes, control characters, the
/// JavaScript line terminators, the last BMP characters and characters that need a UTF-16
/// surrogate pair.
const AWKWARD_CHARS: &[char] = &[
    '"',
    '\\',
    '/',
    '\0',
    '\u{1}',
    '\u{8}',
    '\t',
    '\n',
    '\u{c}',
    '\r',
    '\u{1f}',
    '\u{7f}',
    '\u{80}',
    '\u{9f}',
    '\u{a0}',
    'é',
    '\u{2028}',
    '\u{2029}',
    '\u{fffd}',
    '\u{feff}',
    '\u{ffff}',
    '\u{10000}',
    '😀',
    '\u{10ffff}',
];

const AWKWARD_I64: &[i64] = &[i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX];

const AWKWARD_U64: &[u64] = &[
    0,
    1,
    i64::MAX as u64,
    i64::MAX as u64 + 1,
    u64::MAX - 1,
    u64::MAX,
];

const AWKWARD_F64: &[f64] = &[
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    0.0,
    -0.0,
    0.1,
    1.0,
    1e16,
    1e21,
    -1e-7,
    f64::EPSILON,
    f64::MIN_POSITIVE,
    5e-324,
    f64::MAX,
    f64::MIN,
    9_007_199_254_740_993.0,
];

const AWKWARD_MILLIS: &[u64] = &[
    0,
    999,
    951_782_400_000,
    1_735_689_599_999,
    1_779_451_200_123,
    MAX_MILLIS - 1,
    MAX_MILLIS,
    MAX_MILLIS + 1,
    i64::MAX as u64,
    u64::MAX,
];

/// A JSON-like body. Its `Serialize` drives serde's data model directly, so map keys that are
/// not strings and values that fail to serialize can be expressed.
#[derive(Debug)]
enum Node {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
    /// A value whose `Serialize` returns an error.
    Failing,
    // The rest of serde's data model, which `serde_json::Value` never produces.
    F32(f32),
    I128(i128),
    U128(u128),
    Char(char),
    Bytes(Vec<u8>),
    Some(Box<Node>),
    /// `collect_str` of a `Display` that writes the string in pieces.
    Displayed(String),
    UnitStruct,
    NewtypeStruct(Box<Node>),
    TupleStruct(Vec<Node>),
    /// A struct with fields named from [`FIELD_NAMES`].
    Struct(Vec<(usize, Node)>),
    UnitVariant(usize),
    NewtypeVariant(usize, Box<Node>),
    TupleVariant(usize, Vec<Node>),
    StructVariant(usize, Vec<(usize, Node)>),
}

/// Field and variant names, which serde passes as `&'static str`; some need escaping.
const FIELD_NAMES: &[&str] = &[
    "a",
    "",
    "elapsedMs",
    "quote\"d",
    "back\\slash",
    "new\nline",
    "é",
    "\u{1}",
    "emoji😀",
    "a_field_name_longer_than_a_word",
];

/// Values of 128-bit integers, and floats of 32 bits, cannot be compared through
/// `serde_json::Value`, which holds 64-bit numbers.
fn has_wide_numbers(node: &Node) -> bool {
    match node {
        Node::F32(_) | Node::I128(_) | Node::U128(_) => true,
        Node::Seq(items) | Node::TupleStruct(items) | Node::TupleVariant(_, items) => {
            items.iter().any(has_wide_numbers)
        }
        Node::Map(entries) => entries.iter().any(|(_, v)| has_wide_numbers(v)),
        Node::Struct(fields) | Node::StructVariant(_, fields) => {
            fields.iter().any(|(_, v)| has_wide_numbers(v))
        }
        Node::Some(inner) | Node::NewtypeStruct(inner) | Node::NewtypeVariant(_, inner) => {
            has_wide_numbers(inner)
        }
        _ => false,
    }
}

/// A map key. serde_json writes strings, integers, booleans, chars and finite floats as JSON
/// strings, and refuses the rest.
#[derive(Debug)]
enum Key {
    Str(String),
    I32(i32),
    U64(u64),
    Bool(bool),
    Char(char),
    F64(f64),
    Pair(i32, i32),
    Bytes(Vec<u8>),
}

/// One event to encode.
#[derive(Debug)]
struct Event {
    subject_head: String,
    name: String,
    unix_millis: u64,
    request_id: Option<String>,
    body: Node,
}

impl<'a> Arbitrary<'a> for Event {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let subject_head = if u.ratio(1, 4)? {
            text(u)?
        } else {
            "event.1.".to_owned()
        };
        let name = text(u)?;
        let unix_millis = match u.int_in_range(0..=3)? {
            0 => *u.choose(AWKWARD_MILLIS)?,
            1 => u.int_in_range(0..=MAX_MILLIS)?,
            2 => u.int_in_range(1_700_000_000_000..=1_900_000_000_000)?,
            _ => u.arbitrary()?,
        };
        let request_id = if u.arbitrary()? { Some(text(u)?) } else { None };
        let body = node(u, 0)?;

        Ok(Event {
            subject_head,
            name,
            unix_millis,
            request_id,
            body,
        })
    }
}

/// A string: either the raw input bytes up to the first invalid UTF-8, or a mix of awkward
/// characters, ASCII (control characters included) and arbitrary scalar values.
fn text(u: &mut Unstructured<'_>) -> Result<String> {
    if u.ratio(1, 3)? {
        return u.arbitrary();
    }

    let len = u.int_in_range(0..=24)?;
    let mut out = String::with_capacity(len);
    for _ in 0..len {
        let c = match u.int_in_range(0..=3)? {
            0 => *u.choose(AWKWARD_CHARS)?,
            1 => char::from(u.int_in_range(0..=0x7f_u8)?),
            2 => u.arbitrary()?,
            _ => char::from_u32(u.int_in_range(0x1_0000..=0x10_ffff)?).unwrap_or('\u{10000}'),
        };
        out.push(c);
    }
    Ok(out)
}

fn node(u: &mut Unstructured<'_>, depth: usize) -> Result<Node> {
    let kinds = if depth >= MAX_DEPTH { 12 } else { 16 };
    if u.ratio(1, 4)? {
        return other_node(u, depth);
    }
    Ok(match u.int_in_range(0..=kinds)? {
        0 => Node::Null,
        1 => Node::Bool(u.arbitrary()?),
        2 => Node::I64(*u.choose(AWKWARD_I64)?),
        3 => Node::I64(u.arbitrary()?),
        4 => Node::U64(*u.choose(AWKWARD_U64)?),
        5 => Node::U64(u.arbitrary()?),
        6 => Node::F64(*u.choose(AWKWARD_F64)?),
        7 => Node::F64(f64::from_bits(u.arbitrary()?)),
        8..=11 => Node::Str(text(u)?),
        12 if u.ratio(1, 8)? => Node::Failing,
        12 => Node::Null,
        13 | 14 => {
            let len = u.int_in_range(0..=MAX_WIDTH)?;
            Node::Seq(
                (0..len)
                    .map(|_| node(u, depth + 1))
                    .collect::<Result<_>>()?,
            )
        }
        _ => {
            let len = u.int_in_range(0..=MAX_WIDTH)?;
            let entries = (0..len)
                .map(|_| Ok((key(u)?, node(u, depth + 1)?)))
                .collect::<Result<_>>()?;
            Node::Map(entries)
        }
    })
}

/// The parts of serde's data model beyond JSON's own.
fn other_node(u: &mut Unstructured<'_>, depth: usize) -> Result<Node> {
    let name = |u: &mut Unstructured<'_>| u.choose_index(FIELD_NAMES.len());
    let child = |u: &mut Unstructured<'_>| -> Result<Box<Node>> {
        Ok(Box::new(if depth >= MAX_DEPTH {
            Node::Null
        } else {
            node(u, depth + 1)?
        }))
    };
    let children = |u: &mut Unstructured<'_>| -> Result<Vec<Node>> {
        if depth >= MAX_DEPTH {
            return Ok(Vec::new());
        }
        let len = u.int_in_range(0..=MAX_WIDTH)?;
        (0..len).map(|_| node(u, depth + 1)).collect()
    };
    let fields = |u: &mut Unstructured<'_>| -> Result<Vec<(usize, Node)>> {
        if depth >= MAX_DEPTH {
            return Ok(Vec::new());
        }
        let len = u.int_in_range(0..=MAX_WIDTH)?;
        (0..len)
            .map(|_| Ok((u.choose_index(FIELD_NAMES.len())?, node(u, depth + 1)?)))
            .collect()
    };
    Ok(match u.int_in_range(0..=14)? {
        0 => Node::F32(f32::from_bits(u.arbitrary()?)),
        1 => Node::I128(u.arbitrary()?),
        2 => Node::U128(u.arbitrary()?),
        3 => Node::Char(u.arbitrary()?),
        4 => Node::Bytes(u.arbitrary()?),
        5 => Node::Some(child(u)?),
        6 => Node::Displayed(text(u)?),
        7 => Node::UnitStruct,
        8 => Node::NewtypeStruct(child(u)?),
        9 => Node::TupleStruct(children(u)?),
        10 => Node::Struct(fields(u)?),
        11 => Node::UnitVariant(name(u)?),
        12 => Node::NewtypeVariant(name(u)?, child(u)?),
        13 => Node::TupleVariant(name(u)?, children(u)?),
        _ => Node::StructVariant(name(u)?, fields(u)?),
    })
}

/// Writes its text through `Display` in pieces of at most five bytes.
struct Pieces<'a>(&'a str);

impl std::fmt::Display for Pieces<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rest = self.0;
        while !rest.is_empty() {
            let mut end = rest.len().min(5);
            while !rest.is_char_boundary(end) {
                end += 1;
            }
            f.write_str(&rest[..end])?;
            rest = &rest[end..];
        }
        Ok(())
    }
}

fn key(u: &mut Unstructured<'_>) -> Result<Key> {
    Ok(match u.int_in_range(0..=15)? {
        0 => Key::I32(u.arbitrary()?),
        1 => Key::U64(*u.choose(AWKWARD_U64)?),
        2 => Key::Bool(u.arbitrary()?),
        3 => Key::Char(*u.choose(AWKWARD_CHARS)?),
        4 => Key::F64(*u.choose(AWKWARD_F64)?),
        5 if u.ratio(1, 4)? => Key::Pair(u.arbitrary()?, u.arbitrary()?),
        6 if u.ratio(1, 4)? => Key::Bytes(u.arbitrary()?),
        _ => Key::Str(text(u)?),
    })
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Null => serializer.serialize_unit(),
            Node::Bool(v) => serializer.serialize_bool(*v),
            Node::I64(v) => serializer.serialize_i64(*v),
            Node::U64(v) => serializer.serialize_u64(*v),
            Node::F64(v) => serializer.serialize_f64(*v),
            Node::Str(v) => serializer.serialize_str(v),
            Node::Seq(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Node::Map(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
            Node::Failing => Err(S::Error::custom("this value refuses to be serialized")),
            Node::F32(v) => serializer.serialize_f32(*v),
            Node::I128(v) => serializer.serialize_i128(*v),
            Node::U128(v) => serializer.serialize_u128(*v),
            Node::Char(v) => serializer.serialize_char(*v),
            Node::Bytes(v) => serializer.serialize_bytes(v),
            Node::Some(v) => serializer.serialize_some(v),
            Node::Displayed(v) => serializer.collect_str(&Pieces(v)),
            Node::UnitStruct => serializer.serialize_unit_struct("Unit"),
            Node::NewtypeStruct(v) => serializer.serialize_newtype_struct("Newtype", v),
            Node::TupleStruct(items) => {
                let mut tuple = serializer.serialize_tuple_struct("Tuple", items.len())?;
                for item in items {
                    tuple.serialize_field(item)?;
                }
                tuple.end()
            }
            Node::Struct(fields) => {
                let mut object = serializer.serialize_struct("Struct", fields.len())?;
                for (name, value) in fields {
                    object.serialize_field(FIELD_NAMES[*name], value)?;
                }
                object.end()
            }
            Node::UnitVariant(name) => {
                serializer.serialize_unit_variant("Enum", 0, FIELD_NAMES[*name])
            }
            Node::NewtypeVariant(name, v) => {
                serializer.serialize_newtype_variant("Enum", 1, FIELD_NAMES[*name], v)
            }
            Node::TupleVariant(name, items) => {
                let mut tuple = serializer.serialize_tuple_variant(
                    "Enum",
                    2,
                    FIELD_NAMES[*name],
                    items.len(),
                )?;
                for item in items {
                    tuple.serialize_field(item)?;
                }
                tuple.end()
            }
            Node::StructVariant(name, fields) => {
                let mut object = serializer.serialize_struct_variant(
                    "Enum",
                    3,
                    FIELD_NAMES[*name],
                    fields.len(),
                )?;
                for (field, value) in fields {
                    object.serialize_field(FIELD_NAMES[*field], value)?;
                }
                object.end()
            }
        }
    }
}

impl Serialize for Key {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Key::Str(v) => serializer.serialize_str(v),
            Key::I32(v) => serializer.serialize_i32(*v),
            Key::U64(v) => serializer.serialize_u64(*v),
            Key::Bool(v) => serializer.serialize_bool(*v),
            Key::Char(v) => serializer.serialize_char(*v),
            Key::F64(v) => serializer.serialize_f64(*v),
            Key::Pair(a, b) => (a, b).serialize(serializer),
            Key::Bytes(v) => v.serialize(serializer),
        }
    }
}

/// The envelope as the specification describes it, for serde_json to write.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a, B: ?Sized> {
    version: &'static str,
    timestamp: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    body: &'a B,
}

/// The timestamp the envelope must carry: chrono's text for every instant with a four-digit
/// year, and the last such instant for anything later.
fn expected_timestamp(unix_millis: u64) -> String {
    let millis = unix_millis.min(MAX_MILLIS);
    let instant = DateTime::from_timestamp_millis(millis as i64).expect("within chrono's range");
    instant.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn check<B: Serialize + ?Sized>(event: &Event, body: &B, wide: bool) {
    let timestamp = expected_timestamp(event.unix_millis);
    let reference = Envelope {
        version: "v1",
        timestamp: &timestamp,
        request_id: event.request_id.as_deref(),
        body,
    };
    let expected = serde_json::to_vec(&reference);
    let encoded = jetring::testing::encode_envelope(
        &event.subject_head,
        &event.name,
        event.unix_millis,
        event.request_id.as_deref(),
        body,
    );

    let (subject, payload, expected) = match (encoded, expected) {
        (Ok((subject, payload)), Ok(expected)) => (subject, payload, expected),
        (Err(_), Err(_)) => return,
        (Ok(_), Err(e)) => panic!("jetring encoded a body that serde_json refuses ({e})"),
        (Err(e), Ok(_)) => panic!("jetring refused a body that serde_json writes ({e})"),
    };

    // Subject and payload bytes.
    assert_eq!(subject, format!("{}{}", event.subject_head, event.name));
    assert!(
        payload == expected,
        "payload differs from serde_json's\n jetring: {}\n   serde: {}",
        String::from_utf8_lossy(&payload),
        String::from_utf8_lossy(&expected),
    );

    // The payload read back by two independent parsers, as the value serde_json holds. A
    // body with 128-bit integers or 32-bit floats has no exact `Value`; the bytes, already
    // equal to serde_json's, are checked to parse.
    if !wide {
        let value =
            serde_json::to_value(&reference).expect("serde_json::to_value refused the body");
        check_parsed(event, &timestamp, &payload, value);
    } else {
        let _: serde::de::IgnoredAny =
            serde_json::from_slice(&payload).expect("serde_json cannot parse the payload");
    }
}

fn check_parsed(event: &Event, timestamp: &str, payload: &[u8], value: Value) {
    let parsed: Value = serde_json::from_slice(payload).expect("serde_json cannot parse payload");
    assert_eq!(parsed, value, "serde_json reads the payload differently");

    let mut copy = payload.to_vec();
    let parsed: Value =
        simd_json::serde::from_slice(&mut copy).expect("simd-json cannot parse the payload");
    assert_eq!(parsed, value, "simd-json reads the payload differently");

    // The envelope fields, spelled out.
    let object = parsed.as_object().expect("payload is a JSON object");
    assert_eq!(object["version"], "v1");
    assert_eq!(object["timestamp"], timestamp);
    match &event.request_id {
        Some(id) => assert_eq!(object["requestId"], id.as_str()),
        None => assert!(!object.contains_key("requestId")),
    }
    let keys = if event.request_id.is_some() { 4 } else { 3 };
    assert_eq!(object.len(), keys);
}

fuzz_target!(|event: Event| {
    check(&event, &event.body, has_wide_numbers(&event.body));

    if let Ok(value) = serde_json::to_value(&event.body) {
        check(&event, &value, false);
    }
});
