//! Money as integer minor units: the workspace's one parser, formatter and
//! limits live in `eo_core::money`; the service uses them from here.

pub use eo_core::money::{AMOUNT_MINOR_MAX, AmountError, format_minor, parse_decimal_minor, sum_minor};
