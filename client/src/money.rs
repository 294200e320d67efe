//! Amounts as integer minor units: the service's own parser and limits
//! (`eo_core::money`), so the client never sends what the service refuses.

pub use eo_core::money::{AMOUNT_MINOR_MAX, format_minor, sum_minor};

/// Parses `1`, `12.5` or `12.50` into minor units, with a message fit for a
/// flag or a CSV cell.
pub fn parse_minor(text: &str) -> Result<i64, String> {
    eo_core::money::parse_decimal_minor(text).map_err(|e| format!("amount {text:?} {}", e.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        assert_eq!(parse_minor("1"), Ok(100));
        assert_eq!(parse_minor("12.5"), Ok(1250));
        assert_eq!(parse_minor("0.07"), Ok(7));
        for bad in [
            "",
            "0",
            "-1",
            "1e2",
            "1.234",
            ".5",
            "1.",
            "x",
            "1000000000.01",
            "9999999999",
        ] {
            assert!(parse_minor(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_minor("1000000000"), Ok(AMOUNT_MINOR_MAX));
        assert_eq!(format_minor(1250), "12.50");
        assert_eq!(format_minor(-7), "-0.07");
    }
}
