//! Money as integer minor units: the workspace's one parser, formatter and
//! limits live in `eo_core::money`; the service uses them from here.

pub(crate) use eo_core::money::{format_minor, parse_decimal_minor};
