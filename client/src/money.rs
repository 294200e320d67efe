//! Amounts as integer minor units, as the service stores them.

/// Parses `1`, `12.5` or `12.50` into minor units; refuses signs, exponents,
/// more than two decimals and zero.
pub fn parse_minor(text: &str) -> Result<i64, String> {
    let bad = || format!("{text:?} is not an amount like 12.50");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (text.contains('.') && !digits(fraction)) || fraction.len() > 2 {
        return Err(bad());
    }
    let units: i64 = whole.parse().map_err(|_| bad())?;
    let cents: i64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<2}").parse().map_err(|_| bad())?
    };
    let minor = units * 100 + cents;
    if minor <= 0 {
        Err(format!("{text:?} must be more than 0"))
    } else {
        Ok(minor)
    }
}

pub fn format_minor(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        assert_eq!(parse_minor("1"), Ok(100));
        assert_eq!(parse_minor("12.5"), Ok(1250));
        assert_eq!(parse_minor("0.07"), Ok(7));
        for bad in ["", "0", "-1", "1e2", "1.234", ".5", "1.", "x"] {
            assert!(parse_minor(bad).is_err(), "{bad}");
        }
        assert_eq!(format_minor(1250), "12.50");
        assert_eq!(format_minor(-7), "-0.07");
    }
}
