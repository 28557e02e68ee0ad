//! The two wire forms of commands, queries and replies.
//!
//! Owns the byte-level format every module built with this crate shares; must
//! never depend on anything but the bytes themselves, because host tools (the
//! CLI, clients) decode with this same module.
//!
//! - [`Format::Binary`]: the byte [`BINARY_TAG`] followed by `postcard`.
//! - [`Format::Json`]: UTF-8 JSON text. JSON text never starts with a zero
//!   byte, so the first byte tells the two apart without ambiguity.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// First byte of a binary-form message.
pub const BINARY_TAG: u8 = 0x00;

/// How a message is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `0x00` then postcard.
    Binary,
    /// JSON text.
    Json,
}

/// A message that could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError(pub String);

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodecError {}

/// Which form `bytes` is in. Empty input is an error: it is neither form.
#[inline]
pub fn format_of(bytes: &[u8]) -> Result<Format, CodecError> {
    match bytes.first() {
        None => Err(CodecError("empty message: expected JSON text or 0x00 followed by postcard".into())),
        Some(&BINARY_TAG) => Ok(Format::Binary),
        Some(_) => Ok(Format::Json),
    }
}

/// Decode a message in either form, returning the form it was in.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, Format), CodecError> {
    match format_of(bytes)? {
        Format::Binary => postcard::from_bytes(&bytes[1..])
            .map(|v| (v, Format::Binary))
            .map_err(|e| CodecError(format!("malformed binary message: {e}"))),
        Format::Json => serde_json::from_slice(bytes)
            .map(|v| (v, Format::Json))
            .map_err(|e| CodecError(format!("malformed JSON message: {e}"))),
    }
}

/// Encode `value` in `format`.
pub fn encode<T: Serialize + ?Sized>(value: &T, format: Format) -> Result<Vec<u8>, CodecError> {
    // Room for a typical small reply, so encoding rarely reallocates.
    let mut out = Vec::with_capacity(32);
    encode_into(value, format, &mut out)?;
    Ok(out)
}

/// Encode `value` in `format`, appending to `out`. On an error `out` may
/// hold part of the encoding; the caller truncates it.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, format: Format, out: &mut Vec<u8>) -> Result<(), CodecError> {
    match format {
        Format::Binary => {
            out.push(BINARY_TAG);
            postcard::serialize_with_flavor(value, Append(out))
                .map_err(|e| CodecError(format!("cannot encode reply: {e}")))
        }
        Format::Json => serde_json::to_writer(out, value).map_err(|e| CodecError(format!("cannot encode reply: {e}"))),
    }
}

/// A postcard output that appends to a borrowed `Vec`, a slice at a time
/// (postcard's own `to_extend` pushes byte by byte).
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline]
    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    #[serde(rename_all = "snake_case")]
    enum Cmd {
        Incr(i64),
        Set { key: String, value: i64 },
        Get,
    }

    #[test]
    fn both_forms_round_trip_and_are_told_apart() {
        for cmd in [Cmd::Incr(-5), Cmd::Set { key: "k".into(), value: 7 }, Cmd::Get] {
            for format in [Format::Binary, Format::Json] {
                let bytes = encode(&cmd, format).unwrap();
                assert_eq!(format_of(&bytes).unwrap(), format);
                let (back, f): (Cmd, _) = decode(&bytes).unwrap();
                assert_eq!((back, f), (cmd.clone(), format));
            }
        }
    }

    #[test]
    fn encode_into_appends_the_same_bytes_as_encode() {
        for cmd in [Cmd::Incr(-5), Cmd::Set { key: "k".into(), value: 7 }, Cmd::Get] {
            for format in [Format::Binary, Format::Json] {
                let mut out = b"prefix".to_vec();
                encode_into(&cmd, format, &mut out).unwrap();
                assert_eq!(&out[..6], b"prefix");
                assert_eq!(out[6..], encode(&cmd, format).unwrap()[..]);
            }
        }
    }

    #[test]
    fn json_form_is_readable() {
        assert_eq!(encode(&Cmd::Incr(5), Format::Json).unwrap(), br#"{"incr":5}"#);
        let (c, _): (Cmd, _) = decode(br#""get""#).unwrap();
        assert_eq!(c, Cmd::Get);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert!(decode::<Cmd>(b"").unwrap_err().0.contains("empty"));
        assert!(decode::<Cmd>(b"{nope").unwrap_err().0.contains("malformed JSON"));
        assert!(decode::<Cmd>(&[0x00, 0xff, 0xff]).unwrap_err().0.contains("malformed binary"));
        assert!(decode::<Cmd>(&[0x00]).is_err());
    }
}
