//! JSON serialization byte-compatible with Python's `json.dumps` defaults, which is what Label Studio's
//! `requests.post(json=...)` puts on the wire: `", "` and `": "` separators, every character outside
//! printable ASCII (non-ASCII and DEL) escaped as `\uXXXX`, integers written with all their digits, and
//! floats written as Python's `repr` writes them.
//!
//! The workspace builds `serde_json` with `arbitrary_precision`, so a parsed number keeps its text: an
//! integer beyond 64 bits keeps every digit (Python's ints are unbounded), and a float is read from its
//! text once, correctly rounded, here (the default parser of `serde_json` is off by one unit in the last
//! place for about one 17-digit float in ten, which would change the digits `repr` writes).

use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter, Serializer};

/// A `serde_json` formatter that writes what Python's `json.dumps(obj)` writes.
#[derive(Debug, Default, Clone, Copy)]
pub struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // Python's `ensure_ascii` escapes everything outside ' '..='~'; control characters come to
        // `write_char_escape`, so DEL (0x7f) and non-ASCII are what is left to escape here.
        if fragment.bytes().all(|b| b < 0x7f) {
            return writer.write_all(fragment.as_bytes());
        }
        let mut units = [0u16; 2];
        for ch in fragment.chars() {
            if ch < '\u{7f}' {
                writer.write_all(&[ch as u8])?;
            } else {
                for unit in ch.encode_utf16(&mut units) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }

    fn write_char_escape<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        let s: &[u8] = match escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"/",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(byte) => return write!(writer, "\\u{byte:04x}"),
        };
        writer.write_all(s)
    }

    fn write_f64<W: ?Sized + Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        writer.write_all(python_float_repr(value).as_bytes())
    }

    fn write_f32<W: ?Sized + Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        self.write_f64(writer, f64::from(value))
    }

    /// A number parsed into a `Value` (its JSON text, with `arbitrary_precision`).
    fn write_number_str<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        value: &str,
    ) -> io::Result<()> {
        match python_number(value) {
            Some(python) => writer.write_all(python.as_bytes()),
            None => writer.write_all(value.as_bytes()),
        }
    }
}

/// What Python's `json.dumps(json.loads(text))` writes for the JSON number `text`, or `None` when that is
/// `text` itself. Python reads a number without `.`, `e` or `E` as an int and writes every digit (`-0`
/// becomes `0`); any other as a float, which it writes as `repr` does. A float beyond `f64`'s range, which
/// Python would write as `Infinity` (not JSON), is left as written.
fn python_number(text: &str) -> Option<String> {
    if !text.contains(['.', 'e', 'E']) {
        let negative_zero = text.starts_with('-') && text[1..].bytes().all(|b| b == b'0');
        return negative_zero.then(|| "0".to_owned());
    }
    let value: f64 = text.parse().ok()?;
    let python = python_float_repr(value);
    (value.is_finite() && python != text).then_some(python)
}

/// Appends `value` to `out` as Python's `json.dumps` would write it.
pub fn to_writer<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> serde_json::Result<()> {
    let mut ser = Serializer::with_formatter(out, PythonFormatter);
    value.serialize(&mut ser)
}

/// `value` as Python's `json.dumps` would write it.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    to_writer(&mut out, value)?;
    Ok(out)
}

/// Python's `repr(float)`: the shortest round-tripping digits, in exponent form when the decimal exponent is
/// below -4 or at least 16 (`1e-05`, `1e+16`), otherwise positional with at least one fractional digit.
fn python_float_repr(value: f64) -> String {
    if !value.is_finite() {
        // json.dumps(allow_nan=False) refuses these; serde_json has no NaN in a Value anyway.
        return "null".to_owned();
    }
    // `{:e}` gives the shortest round-tripping digits as `d.ddde±x`.
    let sci = format!("{value:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if negative { "-" } else { "" };
    if !(-4..16).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{frac}e{exp_sign}{:02}", exp.abs());
    }
    let point = exp + 1; // digits before the decimal point
    if point <= 0 {
        let zeros = "0".repeat(point.unsigned_abs() as usize);
        format!("{sign}0.{zeros}{digits}")
    } else if (point as usize) >= digits.len() {
        let zeros = "0".repeat(point as usize - digits.len());
        format!("{sign}{digits}{zeros}.0")
    } else {
        let (int, frac) = digits.split_at(point as usize);
        format!("{sign}{int}.{frac}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dumps(v: &serde_json::Value) -> String {
        String::from_utf8(to_vec(v).unwrap()).unwrap()
    }

    #[test]
    fn separators_and_order_match_python() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"action":"X","b":[1,2,{"c":null,"a":true}],"e":{}}"#).unwrap();
        assert_eq!(
            dumps(&v),
            r#"{"action": "X", "b": [1, 2, {"c": null, "a": true}], "e": {}}"#
        );
    }

    #[test]
    fn non_ascii_is_escaped_like_ensure_ascii() {
        // json.dumps({"t": "café ☃ 😀\n\"/"}) in Python 3
        let v = json!({"t": "café ☃ 😀\n\"/\u{1f}"});
        assert_eq!(
            dumps(&v),
            r#"{"t": "caf\u00e9 \u2603 \ud83d\ude00\n\"/\u001f"}"#
        );
    }

    #[test]
    fn del_is_escaped_as_ensure_ascii_does() {
        // json.dumps({"t": "a\x7fb~"}) in Python 3
        assert_eq!(dumps(&json!({"t": "a\u{7f}b~"})), r#"{"t": "a\u007fb~"}"#);
        assert_eq!(dumps(&json!({"t": "\u{7f}é"})), r#"{"t": "\u007f\u00e9"}"#);
    }

    #[test]
    fn parsed_numbers_are_written_as_python_writes_them_after_json_loads() {
        // json.dumps(json.loads(text)) in Python 3, for each text.
        let cases = [
            (
                "123456789012345678901234567890",
                "123456789012345678901234567890",
            ),
            ("-98765432109876543210", "-98765432109876543210"),
            ("18446744073709551615", "18446744073709551615"),
            ("-0", "0"),
            ("0", "0"),
            ("1.10", "1.1"),
            ("1E5", "100000.0"),
            ("1e-5", "1e-05"),
            ("1e+16", "1e+16"),
            ("1.5e-400", "0.0"),
            ("-0.0", "-0.0"),
            ("0.30000000000000004", "0.30000000000000004"),
            // Floats the default parser of serde_json reads one unit in the last place off.
            ("985.6906946328695", "985.6906946328695"),
            ("212.91890726713459", "212.91890726713459"),
            ("479.60756426982596", "479.60756426982596"),
        ];
        for (text, python) in cases {
            let parsed: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(dumps(&parsed), python, "{text}");
        }
        // Out of f64's range: Python writes `Infinity`, which is not JSON; the text is kept instead.
        let huge: serde_json::Value = serde_json::from_str("[1e400]").unwrap();
        assert_eq!(dumps(&huge), "[1e+400]");
    }

    #[test]
    fn floats_follow_python_repr() {
        let cases = [
            (37.13, "37.13"),
            (1.0, "1.0"),
            (-0.5, "-0.5"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (123456789012345.6, "123456789012345.6"),
            (1.5e300, "1.5e+300"),
            (100.0, "100.0"),
            (0.0, "0.0"),
        ];
        for (value, python) in cases {
            assert_eq!(python_float_repr(value), python, "{value}");
        }
    }
}
