//! Go's `strconv.ParseFloat` as pachd reads numbers from a client (the q values of an
//! `Accept` header, `file_server_refusal`): which texts are numbers and what they are
//! worth, so that a port of a Go negotiation decides as Go does.

/// Go's `strconv.ParseFloat(text, 64)`, where it succeeds (`src/strconv/atof.go`): `inf`
/// and `infinity` (any case, signed or not) and `nan` (any case, unsigned); decimal and
/// hexadecimal (`0x1p-1`, the `p` exponent required) numbers, signed, with `_` allowed
/// between digits (or after the `0x`). A number too large for an `f64` is an error, not
/// infinity. The value is Go's, but for the last bit of a hexadecimal one below 2^-1022
/// (a subnormal, which the scaling here rounds twice).
pub(crate) fn go_parse_float(text: &str) -> Option<f64> {
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let signed = |value: f64| if negative { -value } else { value };
    if unsigned.eq_ignore_ascii_case("inf") || unsigned.eq_ignore_ascii_case("infinity") {
        return Some(signed(f64::INFINITY));
    }
    if text.eq_ignore_ascii_case("nan") {
        return Some(f64::NAN);
    }
    if !go_underscores_ok(unsigned) {
        return None;
    }
    let value = match unsigned
        .strip_prefix("0x")
        .or_else(|| unsigned.strip_prefix("0X"))
    {
        Some(hex) => go_hex_float(hex)?,
        None => go_decimal_float(unsigned)?,
    };
    value.is_finite().then(|| signed(value))
}

/// Go's `underscoreOK` on an unsigned number: each `_` between two digits (a `0x` prefix
/// counts as one).
fn go_underscores_ok(number: &str) -> bool {
    let bytes = number.as_bytes();
    let hex = bytes.len() >= 2 && bytes[0] == b'0' && matches!(bytes[1], b'x' | b'X');
    // The previous byte: a digit (or the prefix), an underscore, or anything else.
    let (mut after_digit, mut after_underscore) = (hex, false);
    for &byte in &bytes[if hex { 2 } else { 0 }..] {
        let digit = byte.is_ascii_digit() || (hex && byte.is_ascii_hexdigit());
        if byte == b'_' {
            if !after_digit {
                return false;
            }
            (after_digit, after_underscore) = (false, true);
        } else if digit {
            (after_digit, after_underscore) = (true, false);
        } else if after_underscore {
            return false;
        } else {
            after_digit = false;
        }
    }
    !after_underscore
}

/// `digits[.digits][e[±]digits]`, at least one mantissa digit, `_` anywhere in the digits
/// (already checked by [`go_underscores_ok`]).
fn go_decimal_float(number: &str) -> Option<f64> {
    let plain: String = number.chars().filter(|&c| c != '_').collect();
    let bytes = plain.as_bytes();
    let mut at = 0;
    let mut digits = 0;
    let mut dot = false;
    while let Some(&byte) = bytes.get(at) {
        match byte {
            b'0'..=b'9' => digits += 1,
            b'.' if !dot => dot = true,
            _ => break,
        }
        at += 1;
    }
    if digits == 0 {
        return None;
    }
    if let Some(b'e' | b'E') = bytes.get(at) {
        at += 1;
        if let Some(b'+' | b'-') = bytes.get(at) {
            at += 1;
        }
        if !bytes.get(at).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        while bytes.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
    }
    if at != bytes.len() {
        return None;
    }
    plain.parse().ok()
}

/// After `0x`: `hexdigits[.hexdigits]p[±]digits`, at least one mantissa digit. The first 16
/// significant digits are kept exactly and any digit after them as a sticky bit, so the
/// value rounds once, as Go's `atofHex` rounds it.
fn go_hex_float(number: &str) -> Option<f64> {
    let plain: String = number.chars().filter(|&c| c != '_').collect();
    let (mantissa, exponent) = plain.split_once(['p', 'P'])?;
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let unsigned_exponent = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
    if whole.len() + fraction.len() == 0
        || unsigned_exponent.is_empty()
        || !unsigned_exponent.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // Go stops counting an exponent past 10,000; any value beyond that is 0 or too large.
    let mut scale: i64 = unsigned_exponent.bytes().fold(0, |e, d| {
        if e < 10_000 {
            e * 10 + i64::from(d - b'0')
        } else {
            e
        }
    });
    if exponent.starts_with('-') {
        scale = -scale;
    }
    let (mut kept, mut significant, mut dropped_nonzero) = (0u64, 0, false);
    for (digit, in_fraction) in whole
        .bytes()
        .map(|d| (d, false))
        .chain(fraction.bytes().map(|d| (d, true)))
    {
        let value = u64::from((digit as char).to_digit(16)?);
        if significant < 16 && (significant > 0 || value != 0) {
            kept = kept << 4 | value;
            significant += 1;
            if in_fraction {
                scale -= 4;
            }
        } else if significant == 0 {
            // A leading zero: only its place counts.
            if in_fraction {
                scale -= 4;
            }
        } else {
            dropped_nonzero |= value != 0;
            if !in_fraction {
                scale += 4;
            }
        }
    }
    if kept == 0 {
        return Some(0.0);
    }
    // The dropped digits only say "a little more": below every bit an f64 keeps.
    let mut value = (kept | u64::from(dropped_nonzero)) as f64;
    // In steps, so that no intermediate power over- or underflows on its own.
    let mut remaining = scale.clamp(-5_000, 5_000) as i32;
    while remaining != 0 {
        let step = remaining.clamp(-1000, 1000);
        value *= 2f64.powi(step);
        remaining -= step;
    }
    Some(value)
}
