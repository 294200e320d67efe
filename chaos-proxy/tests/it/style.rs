//! House rules that a reviewer would otherwise have to count by hand: only
//! the modules other crates use are public (function length is checked for
//! every crate by eo-core's `tests/style.rs`).

use std::path::Path;

#[test]
fn only_config_is_a_public_module() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).expect("lib.rs");
    let public: Vec<&str> = lib.lines().filter(|l| l.starts_with("pub mod ")).collect();
    assert_eq!(
        public,
        ["pub mod config;"],
        "scenarios needs `config`; everything else is pub(crate)"
    );
}
