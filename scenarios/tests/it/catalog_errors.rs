//! A malformed scenario file gets an error naming the file, the field and the fix.

use scenarios::catalog::Scenario;

const GOOD: &str = r#"
name = "mine"
title = "t"
lesson = "l"
expect = "exactly-once"
"#;

fn error(file: &str, text: &str) -> String {
    format!("{:#}", Scenario::parse(file, text).expect_err("must be refused"))
}

#[test]
fn a_good_minimal_file_parses_with_defaults() {
    let s = Scenario::parse("catalog/mine.toml", GOOD).expect("parses");
    assert_eq!(s.client.concurrency, 16);
    assert!(s.proxy.toxics.is_empty());
    assert_eq!((s.replicas, s.service.replica), (1, false));
    let three = Scenario::parse("catalog/mine.toml", &GOOD.replace("expect", "replicas = 3\nexpect")).expect("parses");
    assert!(three.service.replica, "replicas share the file with --replica");
}

#[test]
fn errors_name_file_field_and_fix() {
    let cases: [(&str, String, &[&str]); 9] = [
        (
            "too many replicas",
            GOOD.replace("expect", "replicas = 99\nexpect"),
            &["mine.toml", "`replicas`", "between 1 and 8"],
        ),
        (
            "a replica killed with none to spare",
            format!("{GOOD}[act]\nkind = \"kill-replica\"\nafter_percent = 50\n"),
            &["mine.toml", "act.kind", "replicas = 2 or more"],
        ),
        (
            "typo in a field",
            GOOD.replace("lesson", "lesosn"),
            &["mine.toml", "lesosn", "lesson"],
        ),
        (
            "unknown verdict",
            GOOD.replace("exactly-once", "perfect"),
            &["mine.toml", "perfect", "too-little"],
        ),
        (
            "bad dedup",
            format!("{GOOD}[service]\ndedup = \"sometimes\"\n"),
            &["mine.toml", "sometimes", "check-then-insert"],
        ),
        (
            "bad retries",
            format!("{GOOD}[client]\nretries = \"forever\"\n"),
            &["mine.toml", "client.retries", "unlimited"],
        ),
        (
            "name mismatch",
            GOOD.to_owned(),
            &["other.toml", "`name`", "make them equal"],
        ),
        (
            "toxicity out of range",
            format!("{GOOD}[[proxy.toxics]]\ntype = \"reset_peer\"\nstream = \"upstream\"\ntoxicity = 3.0\n"),
            &["mine.toml", "proxy.toxics[0].toxicity", "between 0 and 1"],
        ),
        (
            "unknown metric",
            format!("{GOOD}[checks]\nat_least = {{ refunds = 1 }}\n"),
            &["mine.toml", "refunds", "known metrics"],
        ),
    ];
    for (what, text, needles) in cases {
        let file = if what == "name mismatch" {
            "catalog/other.toml"
        } else {
            "catalog/mine.toml"
        };
        let message = error(file, &text);
        for needle in needles {
            assert!(message.contains(needle), "{what}: {needle:?} missing from: {message}");
        }
    }
}

#[test]
fn crash_probability_needs_the_crash_act() {
    let message = error("mine.toml", &format!("{GOOD}[service]\ncrash_after_commit = 0.1\n"));
    assert!(
        message.contains("act.kind") && message.contains("crash-service"),
        "{message}"
    );
}
