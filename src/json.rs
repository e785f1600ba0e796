//! The body encoder: a `serde::Serializer` that writes compact JSON straight into the
//! thread's arena buffer.
//!
//! Its output is byte for byte what `serde_json::to_writer` writes for the same value, so
//! that a service sees the same JSON whichever it calls; the `envelope` fuzz target checks
//! this on arbitrary bodies, errors included. It is faster than `serde_json` for event
//! bodies for two reasons:
//!
//! - it appends to a `BytesMut` directly instead of through `io::Write`, so a string costs
//!   one capacity check and one copy rather than three writer calls;
//! - strings are scanned for bytes that need escaping eight at a time (see
//!   [`escape_mask`]), where `serde_json` looks every byte up in a table.
//!
//! Numbers use the formatters `serde_json` uses (`itoa`, and `zmij` for floats), which is
//! what keeps them identical.
//!
//! Two deliberate differences, both on input that makes `serde_json` misbehave:
//!
//! - A sequence or map whose `Serialize` announces zero elements and then writes some is
//!   still written as valid JSON (`serde_json` writes `[]` and then the elements);
//! - A `Display` that fails inside `collect_str` is an error (`serde_json` panics).
//!
//! `serde_json`'s `RawValue` and, with its `arbitrary_precision` feature, `Number` pass their
//! text through a struct with a reserved name; that text is written as it is, after a check
//! that it is one JSON value, so the output stays valid whatever a `Serialize` claims.

use std::fmt::{self, Display, Write as _};

use bytes::{BufMut, BytesMut};
use serde::ser::{self, Impossible, Serialize};

/// The reserved struct and field name of `serde_json::value::RawValue`.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// The reserved struct and field name of `serde_json::Number` with `arbitrary_precision`.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// Why a body could not be written as JSON: a map key that is not a string, a float key that
/// is not finite, or an error raised by the body's own `Serialize`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError(Box<str>);

impl Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EncodeError {}

impl ser::Error for EncodeError {
    fn custom<T: Display>(msg: T) -> Self {
        EncodeError(msg.to_string().into_boxed_str())
    }
}

impl EncodeError {
    fn key_must_be_a_string() -> Self {
        EncodeError("key must be a string".into())
    }

    fn float_key_must_be_finite() -> Self {
        EncodeError("float key must be finite (got NaN or +/-inf)".into())
    }
}

type Result<T = (), E = EncodeError> = std::result::Result<T, E>;

/// An event body encoded once, ahead of time, for [`Bus::publish_encoded`]: publishing it
/// copies its JSON instead of serializing a value.
///
/// It always holds exactly one valid JSON value: [`EncodedBody::new`] writes it with the
/// serializer `publish` uses, and [`EncodedBody::from_json`] checks text given to it.
///
/// [`Bus::publish_encoded`]: crate::Bus::publish_encoded
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBody {
    json: Box<str>,
}

impl EncodedBody {
    /// Encodes `body` as `publish` would.
    ///
    /// # Errors
    ///
    /// [`EncodeError`] for a body that cannot be written as JSON, the case `publish` counts
    /// as a `serialize` drop.
    pub fn new<T: Serialize + ?Sized>(body: &T) -> Result<Self> {
        let mut buf = BytesMut::new();
        write(&mut buf, body)?;
        let json = std::str::from_utf8(&buf)
            .map_err(|_| EncodeError("the serializer wrote invalid UTF-8".into()))?;
        Ok(EncodedBody { json: json.into() })
    }

    /// Takes JSON text as the body, unchanged, once it is known to be exactly one JSON
    /// value.
    ///
    /// # Errors
    ///
    /// [`EncodeError`] saying where `json` is not valid JSON.
    ///
    /// ```
    /// assert!(jetring::EncodedBody::from_json(r#"{"price": 1.5}"#).is_ok());
    /// assert!(jetring::EncodedBody::from_json(r#"{"price": }"#).is_err());
    /// ```
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str::<serde::de::IgnoredAny>(json)
            .map_err(|e| EncodeError(format!("not one valid JSON value: {e}").into()))?;
        Ok(EncodedBody { json: json.into() })
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.json
    }
}

/// Appends `value` to `out` as compact JSON.
///
/// On error `out` holds a partial value; the caller discards it.
#[inline]
pub(crate) fn write<T: Serialize + ?Sized>(out: &mut BytesMut, value: &T) -> Result {
    value.serialize(&mut Json { out })
}

/// Appends `text` to `out` as a JSON string literal.
#[inline]
pub(crate) fn write_str(out: &mut BytesMut, text: &str) {
    out.reserve(text.len() + 2);
    out.put_u8(b'"');
    write_str_contents(out, text);
    out.put_u8(b'"');
}

/// Eight copies of one byte.
const fn splat(byte: u8) -> u64 {
    u64::from_ne_bytes([byte; 8])
}

/// For eight bytes of a string, read little-endian: the high bit of every byte that JSON
/// requires escaped (a control character below 0x20, `"` or `\`), possibly with extra bits
/// above the first such byte, never below it. Zero when none needs escaping.
///
/// The tests are the classic word-at-a-time ones: `x - 0x01..` borrows into the high bit of
/// a byte that is zero (`x ^ '"'` is zero where `x` holds a quote), and `x - 0x20..` of a byte
/// below 0x20; `& !x` discards bytes whose own high bit was set (UTF-8 continuation and lead
/// bytes). A borrow only carries upwards, from a byte that matched, so the lowest bit set
/// always marks a real match.
#[inline]
fn escape_mask(word: u64) -> u64 {
    let quote = word ^ splat(b'"');
    let backslash = word ^ splat(b'\\');
    let control = word.wrapping_sub(splat(0x20)) & !word;
    let quote = quote.wrapping_sub(splat(0x01)) & !quote;
    let backslash = backslash.wrapping_sub(splat(0x01)) & !backslash;
    (control | quote | backslash) & splat(0x80)
}

/// Whether JSON requires `byte` escaped inside a string.
#[inline]
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// The eight bytes of `bytes` from `at`, read little-endian.
#[inline]
fn word_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Index of the first byte of `bytes` that needs escaping, or its length if none does.
#[inline]
fn first_escape(bytes: &[u8]) -> usize {
    let len = bytes.len();
    if len < 8 {
        return bytes.iter().position(|&b| needs_escape(b)).unwrap_or(len);
    }

    let mut at = 0;
    while at + 8 <= len {
        let mask = escape_mask(word_at(bytes, at));
        if mask != 0 {
            return at + (mask.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    if at < len {
        // The last eight bytes, overlapping clean ones: no borrow comes from a clean byte, so
        // the lowest bit set is still the first match.
        let mask = escape_mask(word_at(bytes, len - 8));
        if mask != 0 {
            return len - 8 + (mask.trailing_zeros() / 8) as usize;
        }
    }
    len
}

/// Appends `text` with JSON escapes, without the surrounding quotes, exactly as `serde_json`
/// escapes it: `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, and `\u00XX` (lowercase hex) for the
/// other control characters; everything else, non-ASCII included, as it is. Runs of clean
/// text are found a word at a time and copied in one piece.
#[inline]
fn write_str_contents(out: &mut BytesMut, text: &str) {
    let mut rest = text.as_bytes();
    loop {
        let clean = first_escape(rest);
        out.extend_from_slice(&rest[..clean]);
        let Some(&byte) = rest.get(clean) else {
            return;
        };
        write_escape(out, byte);
        rest = &rest[clean + 1..];
    }
}

#[cold]
fn write_escape(out: &mut BytesMut, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short = match byte {
        b'"' => b'"',
        b'\\' => b'\\',
        0x08 => b'b',
        0x0c => b'f',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        _ => {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]);
            return;
        }
    };
    out.extend_from_slice(&[b'\\', short]);
}

/// Writes what `Display` produces as a JSON string, escaping each piece as it comes.
struct EscapingWriter<'o>(&'o mut BytesMut);

impl fmt::Write for EscapingWriter<'_> {
    fn write_str(&mut self, piece: &str) -> fmt::Result {
        write_str_contents(self.0, piece);
        Ok(())
    }
}

fn collect_str(out: &mut BytesMut, value: &(impl Display + ?Sized)) -> Result {
    out.put_u8(b'"');
    write!(EscapingWriter(out), "{value}").map_err(|_| {
        EncodeError("a Display implementation returned an error during serialization".into())
    })?;
    out.put_u8(b'"');
    Ok(())
}

#[inline]
fn write_integer(out: &mut BytesMut, value: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// An integer inside quotes, as a map key.
#[inline]
fn write_quoted_integer(out: &mut BytesMut, value: impl itoa::Integer) {
    out.put_u8(b'"');
    write_integer(out, value);
    out.put_u8(b'"');
}

/// The `Serializer` methods for integers, each writing `v` to the serializer's buffer with
/// `$write`.
macro_rules! integers {
    (|$out:ident, $v:ident| $write:expr; $($method:ident($ty:ty)),* $(,)?) => {
        $(
            #[inline]
            fn $method(self, $v: $ty) -> Result {
                let $out = self.buffer();
                $write;
                Ok(())
            }
        )*
    };
}

#[inline]
fn write_finite(out: &mut BytesMut, value: impl zmij::Float) {
    out.extend_from_slice(zmij::Buffer::new().format_finite(value).as_bytes());
}

/// The serializer proper.
struct Json<'o> {
    out: &'o mut BytesMut,
}

impl Json<'_> {
    fn buffer(&mut self) -> &mut BytesMut {
        self.out
    }

    /// `{"variant":`, the opening of every enum variant that carries data.
    fn begin_variant(&mut self, variant: &str) {
        self.out.put_u8(b'{');
        write_str(self.out, variant);
        self.out.put_u8(b':');
    }
}

impl<'s, 'o> ser::Serializer for &'s mut Json<'o> {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = Compound<'s, 'o>;
    type SerializeTuple = Compound<'s, 'o>;
    type SerializeTupleStruct = Compound<'s, 'o>;
    type SerializeTupleVariant = Compound<'s, 'o>;
    type SerializeMap = Compound<'s, 'o>;
    type SerializeStruct = Compound<'s, 'o>;
    type SerializeStructVariant = Compound<'s, 'o>;

    #[inline]
    fn serialize_bool(self, v: bool) -> Result {
        self.out
            .extend_from_slice(if v { b"true" as &[u8] } else { b"false" });
        Ok(())
    }

    integers! {
        |out, v| write_integer(out, v);
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_i128(i128),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
    }

    fn serialize_f32(self, v: f32) -> Result {
        if v.is_finite() {
            write_finite(self.out, v);
        } else {
            self.out.extend_from_slice(b"null");
        }
        Ok(())
    }

    #[inline]
    fn serialize_f64(self, v: f64) -> Result {
        if v.is_finite() {
            write_finite(self.out, v);
        } else {
            self.out.extend_from_slice(b"null");
        }
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result {
        write_str(self.out, v.encode_utf8(&mut [0; 4]));
        Ok(())
    }

    #[inline]
    fn serialize_str(self, v: &str) -> Result {
        write_str(self.out, v);
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result {
        self.out.put_u8(b'[');
        for (i, byte) in v.iter().enumerate() {
            if i > 0 {
                self.out.put_u8(b',');
            }
            write_integer(self.out, *byte);
        }
        self.out.put_u8(b']');
        Ok(())
    }

    fn serialize_none(self) -> Result {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result {
        self.serialize_unit()
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result {
        write_str(self.out, variant);
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result {
        self.begin_variant(variant);
        value.serialize(&mut *self)?;
        self.out.put_u8(b'}');
        Ok(())
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'s, 'o>> {
        self.out.put_u8(b'[');
        Ok(Compound::new(self, Kind::Container))
    }

    fn serialize_tuple(self, len: usize) -> Result<Compound<'s, 'o>> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Compound<'s, 'o>> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'s, 'o>> {
        self.begin_variant(variant);
        self.out.put_u8(b'[');
        Ok(Compound::new(self, Kind::Variant))
    }

    #[inline]
    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'s, 'o>> {
        self.out.put_u8(b'{');
        Ok(Compound::new(self, Kind::Container))
    }

    #[inline]
    fn serialize_struct(self, name: &'static str, len: usize) -> Result<Compound<'s, 'o>> {
        if name == RAW_VALUE_TOKEN || name == NUMBER_TOKEN {
            return Ok(Compound::new(self, Kind::Raw(name)));
        }
        self.serialize_map(Some(len))
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'s, 'o>> {
        self.begin_variant(variant);
        self.out.put_u8(b'{');
        Ok(Compound::new(self, Kind::Variant))
    }

    fn collect_str<T: Display + ?Sized>(self, value: &T) -> Result {
        collect_str(self.out, value)
    }
}

/// What a [`Compound`] is writing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A sequence, tuple, map or struct.
    Container,
    /// The same inside `{"variant":…}`, which needs one more `}` at the end.
    Variant,
    /// `serde_json`'s raw-text struct with this reserved name.
    Raw(&'static str),
}

/// A sequence, map or struct being written.
struct Compound<'s, 'o> {
    ser: &'s mut Json<'o>,
    kind: Kind,
    first: bool,
}

impl<'s, 'o> Compound<'s, 'o> {
    #[inline]
    fn new(ser: &'s mut Json<'o>, kind: Kind) -> Self {
        Compound {
            ser,
            kind,
            first: true,
        }
    }

    /// Writes the separator before an element or key.
    #[inline]
    fn next(&mut self) {
        if self.first {
            self.first = false;
        } else {
            self.ser.out.put_u8(b',');
        }
    }

    #[inline]
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        self.next();
        value.serialize(&mut *self.ser)
    }

    #[inline]
    fn close(self, bracket: u8) -> Result {
        self.ser.out.put_u8(bracket);
        if self.kind == Kind::Variant {
            self.ser.out.put_u8(b'}');
        }
        Ok(())
    }

    #[inline]
    fn field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result {
        if let Kind::Raw(token) = self.kind {
            return if key == token {
                value.serialize(RawText(self.ser.out))
            } else {
                Err(EncodeError(
                    format!("a struct named {token:?} has a field {key:?}").into(),
                ))
            };
        }
        let out = &mut *self.ser.out;
        out.reserve(key.len() + 4);
        if !std::mem::take(&mut self.first) {
            out.put_u8(b',');
        }
        out.put_u8(b'"');
        write_str_contents(out, key);
        out.extend_from_slice(b"\":");
        value.serialize(&mut *self.ser)
    }
}

impl ser::SerializeSeq for Compound<'_, '_> {
    type Ok = ();
    type Error = EncodeError;

    #[inline]
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        self.element(value)
    }

    #[inline]
    fn end(self) -> Result {
        self.close(b']')
    }
}

impl ser::SerializeTuple for Compound<'_, '_> {
    type Ok = ();
    type Error = EncodeError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        self.element(value)
    }

    fn end(self) -> Result {
        self.close(b']')
    }
}

impl ser::SerializeTupleStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = EncodeError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        self.element(value)
    }

    fn end(self) -> Result {
        self.close(b']')
    }
}

impl ser::SerializeTupleVariant for Compound<'_, '_> {
    type Ok = ();
    type Error = EncodeError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        self.element(value)
    }

    fn end(self) -> Result {
        self.close(b']')
    }
}

impl ser::SerializeMap for Compound<'_, '_> {
    type Ok = ();
    type Error = EncodeError;

    #[inline]
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result {
        self.next();
        key.serialize(MapKey(self.ser.out))
    }

    #[inline]
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        self.ser.out.put_u8(b':');
        value.serialize(&mut *self.ser)
    }

    #[inline]
    fn end(self) -> Result {
        self.close(b'}')
    }
}

impl ser::SerializeStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = EncodeError;

    #[inline]
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result {
        self.field(key, value)
    }

    #[inline]
    fn end(self) -> Result {
        if let Kind::Raw(_) = self.kind {
            return Ok(());
        }
        self.close(b'}')
    }
}

impl ser::SerializeStructVariant for Compound<'_, '_> {
    type Ok = ();
    type Error = EncodeError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result {
        self.field(key, value)
    }

    fn end(self) -> Result {
        self.close(b'}')
    }
}

/// `Serializer` methods that refuse their input with `$error`: the scalar methods listed,
/// and every method for a value with parts (sequences, tuples, maps, structs, and enum
/// variants carrying data). For the serializers below, which accept only a few kinds of
/// value.
macro_rules! refuse {
    ($error:expr; $($method:ident($($arg:ty),*)),* $(,)?) => {
        $(
            fn $method(self $(, _: $arg)*) -> Result {
                Err($error)
            }
        )*

        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result {
            Err($error)
        }

        fn serialize_seq(self, _: Option<usize>) -> Result<Impossible<(), EncodeError>> {
            Err($error)
        }

        fn serialize_tuple(self, _: usize) -> Result<Impossible<(), EncodeError>> {
            Err($error)
        }

        fn serialize_tuple_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Impossible<(), EncodeError>> {
            Err($error)
        }

        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Impossible<(), EncodeError>> {
            Err($error)
        }

        fn serialize_map(self, _: Option<usize>) -> Result<Impossible<(), EncodeError>> {
            Err($error)
        }

        fn serialize_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Impossible<(), EncodeError>> {
            Err($error)
        }

        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Impossible<(), EncodeError>> {
            Err($error)
        }
    };
}

/// Serializes a map key. As in `serde_json`: strings, chars and unit variants as strings;
/// integers, booleans and finite floats as their JSON text inside quotes; newtype structs
/// and `Some` as what they hold; anything else is an error.
struct MapKey<'o>(&'o mut BytesMut);

impl<'o> MapKey<'o> {
    fn buffer(self) -> &'o mut BytesMut {
        self.0
    }

    fn quoted(self, write: impl FnOnce(&mut BytesMut)) -> Result {
        self.0.put_u8(b'"');
        write(self.0);
        self.0.put_u8(b'"');
        Ok(())
    }
}

impl ser::Serializer for MapKey<'_> {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = Impossible<(), EncodeError>;
    type SerializeTuple = Impossible<(), EncodeError>;
    type SerializeTupleStruct = Impossible<(), EncodeError>;
    type SerializeTupleVariant = Impossible<(), EncodeError>;
    type SerializeMap = Impossible<(), EncodeError>;
    type SerializeStruct = Impossible<(), EncodeError>;
    type SerializeStructVariant = Impossible<(), EncodeError>;

    #[inline]
    fn serialize_str(self, v: &str) -> Result {
        write_str(self.0, v);
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result {
        write_str(self.0, v.encode_utf8(&mut [0; 4]));
        Ok(())
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result {
        write_str(self.0, variant);
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result {
        value.serialize(self)
    }

    fn serialize_bool(self, v: bool) -> Result {
        self.quoted(|out| out.extend_from_slice(if v { b"true" as &[u8] } else { b"false" }))
    }

    integers! {
        |out, v| write_quoted_integer(out, v);
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_i128(i128),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
    }

    fn serialize_f32(self, v: f32) -> Result {
        if !v.is_finite() {
            return Err(EncodeError::float_key_must_be_finite());
        }
        self.quoted(|out| write_finite(out, v))
    }

    fn serialize_f64(self, v: f64) -> Result {
        if !v.is_finite() {
            return Err(EncodeError::float_key_must_be_finite());
        }
        self.quoted(|out| write_finite(out, v))
    }

    fn collect_str<T: Display + ?Sized>(self, value: &T) -> Result {
        collect_str(self.0, value)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result {
        value.serialize(self)
    }

    refuse! {
        EncodeError::key_must_be_a_string();
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
    }
}

/// Writes the text of `serde_json`'s `RawValue` or `Number` as it is, once it is known to be
/// exactly one JSON value.
struct RawText<'o>(&'o mut BytesMut);

impl RawText<'_> {
    fn not_text() -> EncodeError {
        EncodeError("a raw JSON value must be serialized as a string".into())
    }
}

impl ser::Serializer for RawText<'_> {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = Impossible<(), EncodeError>;
    type SerializeTuple = Impossible<(), EncodeError>;
    type SerializeTupleStruct = Impossible<(), EncodeError>;
    type SerializeTupleVariant = Impossible<(), EncodeError>;
    type SerializeMap = Impossible<(), EncodeError>;
    type SerializeStruct = Impossible<(), EncodeError>;
    type SerializeStructVariant = Impossible<(), EncodeError>;

    fn serialize_str(self, v: &str) -> Result {
        serde_json::from_str::<serde::de::IgnoredAny>(v)
            .map_err(|e| EncodeError(format!("raw JSON value is not valid JSON: {e}").into()))?;
        self.0.extend_from_slice(v.as_bytes());
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result {
        Err(Self::not_text())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, _: &T) -> Result {
        Err(Self::not_text())
    }

    refuse! {
        Self::not_text();
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Serialize;

    use super::*;

    /// Writes `value` with both serializers and checks they agree: the same bytes, or both
    /// refusing it.
    #[track_caller]
    fn same_as_serde_json<T: Serialize + ?Sized>(value: &T) {
        let mut ours = BytesMut::new();
        let ours = write(&mut ours, value).map(|()| ours.to_vec());
        let theirs = serde_json::to_vec(value);
        match (ours, theirs) {
            (Ok(ours), Ok(theirs)) => assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs)
            ),
            (Err(_), Err(_)) => {}
            (ours, theirs) => panic!("disagree: ours {ours:?}, serde_json {theirs:?}"),
        }
    }

    #[derive(Serialize)]
    struct Unit;

    #[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
    struct Newtype(u8);

    #[derive(Serialize)]
    struct Pair(i32, &'static str);

    #[derive(Serialize)]
    enum Variants {
        Plain,
        Newtype(i64),
        Tuple(u8, char),
        Struct { a: bool, b: Option<f32> },
        EmptyTuple(),
        EmptyStruct {},
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Everything {
        flag: bool,
        small: i8,
        medium: i16,
        signed: i32,
        wide: i64,
        widest: i128,
        byte: u8,
        short: u16,
        unsigned: u32,
        long: u64,
        longest: u128,
        single: f32,
        double: f64,
        letter: char,
        text: String,
        #[serde(with = "serde_bytes_like")]
        bytes: Vec<u8>,
        missing: Option<u8>,
        present: Option<&'static str>,
        unit: (),
        unit_struct: Unit,
        newtype: Newtype,
        pair: Pair,
        tuple: (u8, (), &'static str),
        list: Vec<Variants>,
        empty_list: Vec<u8>,
        map: BTreeMap<&'static str, f64>,
        empty_map: BTreeMap<u8, u8>,
        #[serde(rename = "we\"ird\nkey")]
        weird_key: u8,
    }

    /// Serializes a `Vec<u8>` with `serialize_bytes`, as `serde_bytes` does.
    mod serde_bytes_like {
        pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
    }

    #[test]
    fn every_serde_type_is_written_as_serde_json_writes_it() {
        let mut value = Everything {
            flag: true,
            small: i8::MIN,
            medium: -300,
            signed: i32::MAX,
            wide: i64::MIN,
            widest: i128::MIN,
            byte: 255,
            short: 65_535,
            unsigned: 0,
            long: u64::MAX,
            longest: u128::MAX,
            single: 0.1,
            double: 12.734512,
            letter: '"',
            text: "tab\there \u{1} \u{7f} é 😀 \\ \"quoted\" \u{2028}".into(),
            bytes: vec![0, 1, 255],
            missing: None,
            present: Some("yes"),
            unit: (),
            unit_struct: Unit,
            newtype: Newtype(7),
            pair: Pair(-1, "p"),
            tuple: (1, (), "t"),
            list: vec![
                Variants::Plain,
                Variants::Newtype(-5),
                Variants::Tuple(3, '\n'),
                Variants::Struct {
                    a: false,
                    b: Some(f32::NAN),
                },
                Variants::EmptyTuple(),
                Variants::EmptyStruct {},
            ],
            empty_list: vec![],
            map: [("a", 1.0), ("b", f64::INFINITY), ("c", -0.0), ("d", 1e300)]
                .into_iter()
                .collect(),
            empty_map: BTreeMap::new(),
            weird_key: 1,
        };
        same_as_serde_json(&value);

        // The same as a `serde_json::Value`, whose numbers stop at 64 bits.
        value.widest = -1;
        value.longest = 1;
        same_as_serde_json(&serde_json::to_value(&value).unwrap());
    }

    #[test]
    fn floats_use_the_same_shortest_text() {
        for v in [
            0.0,
            -0.0,
            1.0,
            0.1,
            1e16,
            1e21,
            1e-7,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            12.734512,
            f64::NAN,
            f64::NEG_INFINITY,
        ] {
            same_as_serde_json(&v);
            same_as_serde_json(&(v as f32));
        }
    }

    #[test]
    fn every_byte_is_escaped_as_serde_json_escapes_it_at_every_offset() {
        // Each byte value at each position of a word and in the tail, so that both the
        // word-at-a-time scan and the padded tail see every byte.
        for byte in 0..=0x7f_u8 {
            for offset in 0..20 {
                let mut text = "x".repeat(offset);
                text.push(char::from(byte));
                text.push_str("yz");
                same_as_serde_json(&text);
            }
        }
        for text in [
            "",
            "\"",
            "\\\\",
            "\u{0}\u{1f}",
            "ééééé\"ééé",
            "😀\n😀\r😀\t😀",
        ] {
            same_as_serde_json(text);
        }
    }

    #[test]
    fn map_keys_follow_serde_json() {
        let mut ints = BTreeMap::new();
        ints.insert(-1_i64, 1);
        ints.insert(i64::MAX, 2);
        same_as_serde_json(&ints);

        same_as_serde_json(&BTreeMap::from([(true, 1), (false, 2)]));
        same_as_serde_json(&BTreeMap::from([('\u{1}', 1), ('é', 2)]));
        same_as_serde_json(&BTreeMap::from([(Some("k"), 1)]));
        same_as_serde_json(&BTreeMap::from([(Newtype(3), 1)]));
        same_as_serde_json(&BTreeMap::from([(u128::MAX, 1)]));

        // Refused by both.
        let float_key = serde_json_map_with_f64_key(f64::NAN);
        assert!(write(&mut BytesMut::new(), &float_key).is_err());
        assert!(serde_json::to_vec(&float_key).is_err());
        same_as_serde_json(&float_key);
        same_as_serde_json(&serde_json_map_with_f64_key(2.5));
        same_as_serde_json(&BTreeMap::from([((1, 2), 1)]));
        same_as_serde_json(&BTreeMap::from([(vec![1_u8], 1)]));
        same_as_serde_json(&BTreeMap::from([((), 1)]));
        same_as_serde_json(&BTreeMap::from([(None::<&str>, 1)]));
    }

    /// A map with one float key; floats are not `Ord`, so not a `BTreeMap`.
    fn serde_json_map_with_f64_key(key: f64) -> impl Serialize {
        struct FloatKeyed(f64);
        impl Serialize for FloatKeyed {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry(&self.0, &1)?;
                map.end()
            }
        }
        FloatKeyed(key)
    }

    #[test]
    fn collect_str_escapes_what_display_writes() {
        struct Shown;
        impl Display for Shown {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a \"quoted\"")?;
                f.write_str(" piece\n")
            }
        }
        struct Collected;
        impl Serialize for Collected {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&Shown)
            }
        }
        same_as_serde_json(&Collected);
        same_as_serde_json(&BTreeMap::from([("k", Collected)]));
    }

    #[test]
    fn a_failing_display_is_an_error_not_a_panic() {
        struct Failing;
        impl Display for Failing {
            fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
                Err(fmt::Error)
            }
        }
        struct Collected;
        impl Serialize for Collected {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&Failing)
            }
        }
        assert!(write(&mut BytesMut::new(), &Collected).is_err());
    }

    #[test]
    fn a_serialize_error_is_passed_on() {
        struct Refuses;
        impl Serialize for Refuses {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(ser::Error::custom("not today"))
            }
        }
        let err = write(&mut BytesMut::new(), &vec![Refuses]).unwrap_err();
        assert_eq!(err.to_string(), "not today");
    }

    #[test]
    fn a_wrong_length_hint_still_gives_valid_json() {
        struct Liar;
        impl Serialize for Liar {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(Some(0))?;
                map.serialize_entry("a", &1)?;
                map.end()
            }
        }
        let mut out = BytesMut::new();
        write(&mut out, &Liar).unwrap();
        assert_eq!(&out[..], br#"{"a":1}"#);
    }

    /// A struct that claims `serde_json`'s reserved raw-value name.
    struct Raw(&'static str);

    impl Serialize for Raw {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeStruct;
            let mut raw = s.serialize_struct(RAW_VALUE_TOKEN, 1)?;
            raw.serialize_field(RAW_VALUE_TOKEN, self.0)?;
            raw.end()
        }
    }

    #[test]
    fn raw_json_text_is_written_as_it_is_only_when_valid() {
        let mut out = BytesMut::new();
        write(&mut out, &vec![Raw(r#"{"x": [1, 2]}"#), Raw("3")]).unwrap();
        assert_eq!(&out[..], br#"[{"x": [1, 2]},3]"#);

        for bad in ["", "{", "1 2", "\"open", "nul"] {
            assert!(write(&mut BytesMut::new(), &Raw(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn escape_mask_marks_the_first_byte_needing_an_escape() {
        for at in 0..8 {
            for byte in [0_u8, 0x1f, b'"', b'\\'] {
                let mut word = [b'a'; 8];
                word[at] = byte;
                let mask = escape_mask(u64::from_le_bytes(word));
                assert_eq!(mask.trailing_zeros() / 8, at as u32, "{byte:#x} at {at}");
            }
        }
        // Bytes that never need escaping, including every non-ASCII one.
        for byte in (0x20_u8..=0xff).filter(|b| *b != b'"' && *b != b'\\') {
            assert_eq!(escape_mask(splat(byte)), 0, "{byte:#x}");
        }
    }
}
