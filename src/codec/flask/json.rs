//! JSON written exactly as Flask writes it: Python's `json.dumps` with
//! `separators=(",", ":")`, `sort_keys=True` and `ensure_ascii=True`.
//!
//! serde_json already writes compact JSON, sorts keys (its map is ordered)
//! and escapes `"`, `\` and control characters as Python does; this
//! formatter adds what differs: every character outside printable ASCII as
//! `\uXXXX` (UTF-16 surrogate pairs past U+FFFF, DEL included), and floats
//! as Python's `repr`.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter, Serializer};

/// `value` as Flask's session serializer would write it.
pub(super) fn to_vec<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let mut serializer = Serializer::with_formatter(&mut out, PythonFormatter);
    value
        .serialize(&mut serializer)
        .expect("writing JSON to a Vec cannot fail");
    out
}

struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if (' '..='~').contains(&c) {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn write_f64<W: ?Sized + Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        writer.write_all(python_float_repr(value).as_bytes())
    }

    fn write_f32<W: ?Sized + Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        self.write_f64(writer, f64::from(value))
    }

    // Everything else is CompactFormatter's, which matches Python.
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        CompactFormatter.begin_array_value(w, first)
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        CompactFormatter.begin_object_key(w, first)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        CompactFormatter.begin_object_value(w)
    }
}

/// Python's `repr(float)`: the shortest digits that round-trip (the same
/// digits Rust prints), in fixed notation when the decimal exponent lies in
/// `-4 < decpt <= 16`, else as `d.ddde±XX` with at least two exponent
/// digits; integral values keep a `.0`.
fn python_float_repr(value: f64) -> String {
    if !value.is_finite() {
        // Python writes NaN/Infinity, which no JSON parser (and no
        // serde_json Value) holds; unreachable from a session's data.
        return "null".into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits as d.ddde-x.
    let formatted = format!("{:e}", value.abs());
    let (mantissa, exponent) = formatted.split_once('e').expect("{:e} has an e");
    let exponent: i32 = exponent.parse().expect("{:e} exponent is an integer");
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if value.is_sign_negative() { "-" } else { "" };
    if digits.trim_matches('0').is_empty() {
        return format!("{sign}0.0");
    }
    let digits = digits.trim_end_matches('0');
    // value = 0.DIGITS × 10^decpt
    let decpt = exponent + 1;
    if decpt <= -4 || decpt > 16 {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let e = decpt - 1;
        let esign = if e < 0 { '-' } else { '+' };
        return format!("{sign}{first}{dot}e{esign}{:02}", e.abs());
    }
    let n = digits.len() as i32;
    if decpt <= 0 {
        let zeros = "0".repeat(decpt.unsigned_abs() as usize);
        format!("{sign}0.{zeros}{digits}")
    } else if decpt >= n {
        let zeros = "0".repeat((decpt - n) as usize);
        format!("{sign}{digits}{zeros}.0")
    } else {
        let (int, frac) = digits.split_at(decpt as usize);
        format!("{sign}{int}.{frac}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_print_as_python_repr() {
        // Each pair checked against CPython 3.11's repr().
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (123.456, "123.456"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345680.0, "1.2345678901234568e+17"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e-100, "1e-100"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (2.71, "2.71"),
            (100.0, "100.0"),
        ];
        for (value, expected) in cases {
            assert_eq!(python_float_repr(value), expected, "{value:e}");
        }
    }

    #[test]
    fn strings_escape_like_ensure_ascii() {
        let value =
            json!({"b": "zoë \u{7f} 日本 😀 \"q\" \\ \n\t\u{1}", "a": [1, 2.5, true, null]});
        assert_eq!(
            String::from_utf8(to_vec(&value)).unwrap(),
            r#"{"a":[1,2.5,true,null],"b":"zo\u00eb \u007f \u65e5\u672c \ud83d\ude00 \"q\" \\ \n\t\u0001"}"#
        );
    }
}
