//! House rules a reviewer would otherwise count by hand, for every crate of
//! the workspace: every function in a crate's `src/` is under 70 lines.

use std::path::{Path, PathBuf};

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

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_function_in_every_crate_is_under_70_lines() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(workspace).expect("read workspace") {
        let src = entry.expect("entry").path().join("src");
        if src.is_dir() && src.parent().is_some_and(|c| c.join("Cargo.toml").exists()) {
            rust_files(&src, &mut files);
        }
    }
    assert!(files.len() > 20, "found only {} source files", files.len());
    let mut long = Vec::new();
    for path in files {
        {
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
