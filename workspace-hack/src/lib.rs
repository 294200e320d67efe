//! No code. See `Cargo.toml`: this crate only enables, for every package
//! selection, the same features of the shared dependencies, so switching
//! from `cargo run -p scenarios` to `-p payment-service` (or to
//! `cargo test --workspace --release`) does not rebuild them.
