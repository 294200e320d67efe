//! House rules that a reviewer would otherwise have to count by hand:
//! every function in `src/` is under 70 lines, and only the modules other
//! crates use are public.

use std::path::Path;

/// Longest function allowed, in lines from `fn` to its closing brace.
const FN_LINES_MAX: usize = 69;

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// `(line number, length, signature)` of every function in `text` longer
/// than [`FN_LINES_MAX`]. A function starts at a `fn` line that does not end
/// in `;` and ends at the first later line that is a `}` at its indentation.
fn long_functions(text: &str) -> Vec<(usize, usize, String)> {
    let mut found = Vec::new();
    let mut open: Option<(usize, usize, &str)> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let words: Vec<&str> = t.split_whitespace().take(5).collect();
        let is_fn = words.contains(&"fn")
            && words
                .iter()
                .take_while(|w| **w != "fn")
                .all(|w| matches!(*w, "pub" | "pub(crate)" | "async" | "const" | "unsafe") || w.starts_with("pub("));
        match open {
            None if is_fn && !t.ends_with(';') && !(t.contains('{') && t.ends_with('}')) => {
                open = Some((i, indent(line), t));
            }
            Some((start, at, sig)) if indent(line) == at && t.starts_with('}') => {
                let len = i - start + 1;
                if len > FN_LINES_MAX {
                    found.push((start + 1, len, sig.to_owned()));
                }
                open = None;
            }
            _ => {}
        }
    }
    found
}

#[test]
fn every_function_is_under_70_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut long = Vec::new();
    for entry in std::fs::read_dir(&src).expect("read src") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("read file");
            for (line, len, sig) in long_functions(&text) {
                long.push(format!("{}:{line} ({len} lines) {sig}", path.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {FN_LINES_MAX} lines:\n{}",
        long.join("\n")
    );
    // The counter itself counts: a 70-line function is found.
    let body = "    x();\n".repeat(68);
    assert_eq!(long_functions(&format!("fn f() {{\n{body}}}\n")).len(), 1);
    assert!(long_functions(&format!("fn f() {{\n{}}}\n", "    x();\n".repeat(67))).is_empty());
}

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
