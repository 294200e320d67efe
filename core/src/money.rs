//! Money as integer minor units (cents). Parsing accepts exactly the shapes the
//! contract allows; nothing here ever touches a float. The client and the
//! service share this one parser, so what one accepts the other does too.

/// The largest amount one payment may move: 1,000,000,000.00 in minor units.
/// Big enough for any lesson, small enough that sums of millions of payments
/// stay far from `i64::MAX`.
pub const AMOUNT_MINOR_MAX: i64 = 100_000_000_000;

/// Digits accepted before parsing gives up: bounds the work on hostile input.
const AMOUNT_TEXT_BYTES_MAX: usize = 32;

/// Why an amount was refused. The message is shown to the caller verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmountError(pub &'static str);

/// Parses a decimal text such as `1`, `12.5` or `12.50` into minor units.
///
/// Accepted: ASCII digits, optionally a dot followed by one or two digits.
/// Refused: signs, exponents, blanks, a bare dot, more than two decimals,
/// zero, and anything above [`AMOUNT_MINOR_MAX`].
pub fn parse_decimal_minor(text: &str) -> Result<i64, AmountError> {
    if text.is_empty() {
        return Err(AmountError("must not be empty"));
    }
    if text.len() > AMOUNT_TEXT_BYTES_MAX {
        return Err(AmountError("is too long"));
    }
    if text.contains(['e', 'E']) {
        return Err(AmountError("must not use an exponent"));
    }
    if text.starts_with('-') {
        return Err(AmountError("must be greater than 0"));
    }
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AmountError("must be a decimal number such as 12.50"));
    }
    let cents: i64 = match fraction {
        None => 0,
        Some(f) if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(AmountError("must be a decimal number such as 12.50"));
        }
        Some(f) if f.len() > 2 => return Err(AmountError("must have at most 2 decimals")),
        Some(f) => {
            let digits: i64 = f.parse().map_err(|_| AmountError("is not a number"))?;
            if f.len() == 1 { digits * 10 } else { digits }
        }
    };
    // Leading zeros are harmless; strip them so the length check below is about magnitude.
    let whole = whole.trim_start_matches('0');
    if whole.len() > 10 {
        return Err(AmountError("must be at most 1000000000.00"));
    }
    let units: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| AmountError("is not a number"))?
    };
    let minor = units
        .checked_mul(100)
        .and_then(|m| m.checked_add(cents))
        .ok_or(AmountError("must be at most 1000000000.00"))?;
    if minor == 0 {
        return Err(AmountError("must be greater than 0"));
    }
    if minor > AMOUNT_MINOR_MAX {
        return Err(AmountError("must be at most 1000000000.00"));
    }
    Ok(minor)
}

/// Formats minor units with exactly two decimals: `100` → `"1.00"`, `-5` → `"-0.05"`.
/// Takes anything up to `i128`, so sums that exceed `i64` still render.
pub fn format_minor(minor: impl Into<i128>) -> String {
    let minor: i128 = minor.into();
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    // Division in 128 bits is a library call; every single amount (and most
    // sums) fits in 64.
    match u64::try_from(abs) {
        Ok(abs) => format!("{sign}{}.{:02}", abs / 100, abs % 100),
        Err(_) => format!("{sign}{}.{:02}", abs / 100, abs % 100),
    }
}

/// Sums amounts in 128 bits: 1e8 payments of [`AMOUNT_MINOR_MAX`] are 1e19,
/// past `i64::MAX`, but no realistic count of `i64` amounts reaches `i128::MAX`.
pub fn sum_minor<I: IntoIterator<Item = i64>>(amounts: I) -> i128 {
    amounts.into_iter().map(i128::from).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_contract_shapes() {
        assert_eq!(parse_decimal_minor("1"), Ok(100));
        assert_eq!(parse_decimal_minor("12.50"), Ok(1250));
        assert_eq!(parse_decimal_minor("12.5"), Ok(1250));
        assert_eq!(parse_decimal_minor("0.01"), Ok(1));
        assert_eq!(parse_decimal_minor("007"), Ok(700));
        assert_eq!(parse_decimal_minor("1000000000.00"), Ok(AMOUNT_MINOR_MAX));
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "0",
            "0.00",
            "-1",
            "+1",
            "1e3",
            "1E3",
            "1.",
            ".5",
            "1.234",
            "1.230",
            " 1",
            "1 ",
            "1,00",
            "abc",
            "0x10",
            "1000000000.01",
            "99999999999999999999",
            "NaN",
            "Infinity",
        ] {
            assert!(parse_decimal_minor(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn formats_two_decimals() {
        assert_eq!(format_minor(100), "1.00");
        assert_eq!(format_minor(1250), "12.50");
        assert_eq!(format_minor(1), "0.01");
        assert_eq!(format_minor(0), "0.00");
        assert_eq!(format_minor(-5), "-0.05");
        assert_eq!(format_minor(-12345), "-123.45");
    }

    #[test]
    fn sums_past_i64() {
        // 1e8 payments of the maximum: 1e19 minor units, past i64::MAX.
        let total = sum_minor([i64::MAX, i64::MAX, AMOUNT_MINOR_MAX]);
        assert_eq!(total, 2 * i128::from(i64::MAX) + i128::from(AMOUNT_MINOR_MAX));
        assert_eq!(
            format_minor(100_000_000 * i128::from(AMOUNT_MINOR_MAX)),
            "100000000000000000.00"
        );
        assert_eq!(format_minor(i128::from(i64::MIN)), "-92233720368547758.08");
    }
}
