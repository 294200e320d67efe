//! Drawing a story: a sequence diagram for the terminal (client, proxy and
//! service as columns, at most 100 columns wide) or as Mermaid text for
//! slides and READMEs.

use std::fmt::Write;

use crate::report::{WIDTH_COLUMNS_MAX, wrap};
use crate::story::{Actor, Step};

/// Column of each lifeline.
fn x(actor: Actor) -> usize {
    match actor {
        Actor::Client => 1,
        Actor::Proxy => 38,
        Actor::Service => 75,
    }
}

const LIFELINE: char = '│';

/// An empty row: spaces and the three lifelines.
fn blank() -> Vec<char> {
    let mut row = vec![' '; WIDTH_COLUMNS_MAX];
    for a in [Actor::Client, Actor::Proxy, Actor::Service] {
        row[x(a)] = LIFELINE;
    }
    row
}

fn put(row: &mut [char], at: usize, text: &str) {
    for (i, c) in text.chars().enumerate() {
        if let Some(cell) = row.get_mut(at + i) {
            *cell = c;
        }
    }
}

fn line(row: &[char]) -> String {
    row.iter().collect::<String>().trim_end().to_owned()
}

fn arrow_row(from: Actor, to: Actor, label: &str, lost: bool) -> String {
    let mut row = blank();
    let (a, b) = (x(from).min(x(to)), x(from).max(x(to)));
    let dash = if lost { '╌' } else { '─' };
    for cell in &mut row[a + 1..b] {
        *cell = dash;
    }
    if x(to) > x(from) {
        row[b - 1] = '▶';
    } else {
        row[a + 1] = '◀';
    }
    let room = b - a - 7;
    let label: String = label.chars().take(room).collect();
    put(&mut row, a + 3, &format!(" {label} "));
    line(&row)
}

/// A note beside a lifeline, wrapped to the room before the next one.
fn note_rows(on: Actor, text: &str) -> Vec<String> {
    let start = x(on) + 2;
    let end = match on {
        Actor::Client => x(Actor::Proxy) - 1,
        Actor::Proxy => x(Actor::Service) - 1,
        Actor::Service => WIDTH_COLUMNS_MAX,
    };
    wrap("", "", text, end - start)
        .into_iter()
        .map(|piece| {
            let mut row = blank();
            put(&mut row, start, &piece);
            line(&row)
        })
        .collect()
}

/// A line across all columns: `── text ─────`.
fn banner(text: &str) -> String {
    let text: String = format!("── {text} ").chars().take(WIDTH_COLUMNS_MAX).collect();
    let fill = WIDTH_COLUMNS_MAX.saturating_sub(text.chars().count());
    format!("{text}{}", "─".repeat(fill))
}

/// The terminal diagram, one entry per step (a step may take several lines).
pub fn terminal(steps: &[Step], title: &str) -> Vec<Vec<String>> {
    let mut head = blank();
    put(&mut head, x(Actor::Client), "client");
    put(&mut head, x(Actor::Proxy), "proxy");
    put(&mut head, x(Actor::Service), "service");
    let mut out = vec![wrap("", "", title, WIDTH_COLUMNS_MAX), vec![line(&head)]];
    for step in steps {
        out.push(match step {
            Step::Attempt { text, .. } | Step::Ledger { text } => vec![line(&blank()), banner(text)],
            Step::Arrow { from, to, label, lost } => vec![arrow_row(*from, *to, label, *lost)],
            Step::Note { on, text } => note_rows(*on, text),
        });
    }
    out
}

fn id(actor: Actor) -> &'static str {
    match actor {
        Actor::Client => "C",
        Actor::Proxy => "P",
        Actor::Service => "S",
    }
}

/// Mermaid has no escape for `;` or `#` in messages: write them as entities.
fn mermaid_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '#' => "#35;".to_owned(),
            ';' => "#59;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// The same story as a Mermaid `sequenceDiagram`.
pub fn mermaid(steps: &[Step], title: &str) -> String {
    let mut out = String::new();
    let quoted = mermaid_text(title).replace('\\', "\\\\").replace('"', "\\\"");
    let _ = writeln!(out, "---\ntitle: \"{quoted}\"\n---");
    let _ = writeln!(out, "sequenceDiagram");
    for (a, name) in [
        (Actor::Client, "client"),
        (Actor::Proxy, "proxy"),
        (Actor::Service, "service"),
    ] {
        let _ = writeln!(out, "    participant {} as {name}", id(a));
    }
    for step in steps {
        let _ = match step {
            Step::Attempt { text, .. } | Step::Ledger { text } => {
                writeln!(out, "    Note over C,S: {}", mermaid_text(text))
            }
            Step::Arrow { from, to, label, lost } => {
                let shape = if *lost {
                    "--x"
                } else if x(*to) < x(*from) {
                    "-->>"
                } else {
                    "->>"
                };
                writeln!(out, "    {}{shape}{}: {}", id(*from), id(*to), mermaid_text(label))
            }
            Step::Note { on, text } => writeln!(out, "    Note over {}: {}", id(*on), mermaid_text(text)),
        };
    }
    out
}
