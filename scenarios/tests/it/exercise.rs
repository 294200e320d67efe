//! The exercise's ladder against every reference solution: solution N passes
//! stages 1 to N and fails stage N + 1 (so each stage catches a real
//! mistake), the full solution passes them all. Also the projector's diff.

use scenarios::exercise::{self, Ladder, Status};
use scenarios::play::Settings;

const SEED: u64 = 20_261_210;

fn settings() -> Settings {
    Settings {
        payments: 20,
        seed: SEED,
        keep: None,
        exe: env!("CARGO_BIN_EXE_scenarios").into(),
        observer: None,
        outside: None,
        db_url: None,
    }
}

async fn ladder(solution: u8) -> Ladder {
    exercise::play_ladder(&settings(), Some(solution))
        .await
        .expect("the ladder plays")
}

/// Solution `n` passes exactly the first `n` stages; a failed stage says
/// why, with a hint and the attempts of one payment at fault.
async fn passes_exactly(n: usize) {
    let ladder = ladder(n as u8).await;
    let text = exercise::render(&ladder);
    assert_eq!(ladder.passed, n, "solution {n}:\n{text}");
    assert_eq!(ladder.pass, n == ladder.stages.len(), "{text}");
    if let Some(failed) = ladder.stages.get(n) {
        assert_eq!(failed.status, Status::Failed, "{text}");
        assert!(!failed.problems.is_empty() && failed.hint.is_some(), "{text}");
        let timeline = failed.timeline.as_ref().expect("a payment at fault");
        assert!(!timeline.attempts.is_empty(), "{text}");
        assert!(
            ladder.stages[n + 1..].iter().all(|s| s.status == Status::NotPlayed),
            "{text}"
        );
        assert!(text.contains("hint") && text.contains("one payment at fault"), "{text}");
    }
}

macro_rules! solutions {
    ($($test:ident => $n:literal,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                passes_exactly($n).await;
            }
        )*
    };
}

solutions! {
    the_starting_state_fails_stage_1 => 0,
    look_up_then_insert_fails_stage_2 => 1,
    keys_in_memory_fail_stage_3 => 2,
    the_original_workshops_solution_fails_stage_4 => 3,
    stored_answers_alone_fail_stage_5 => 4,
    the_full_solution_passes_every_stage => 5,
}

#[test]
fn show_solution_is_a_diff_from_the_starting_state() {
    let first = exercise::show_solution(1).expect("solution 1");
    assert!(
        first.contains("Reference solution 1: look the key up, then insert."),
        "{first}"
    );
    assert!(
        first.contains("+     if let Some(first) = tx.payment_with_key(key)? {"),
        "{first}"
    );
    assert!(
        first.contains("-     tracing::debug!(key, \"invoked with idempotence key\");"),
        "{first}"
    );
    assert!(
        first.contains("      let payment = tx.insert(request, key)?;"),
        "{first}"
    );
    let start = exercise::show_solution(0).expect("solution 0");
    let diff = start.split_once("+++ reference solution 0\n").expect("a diff").1;
    assert!(diff.lines().all(|l| l.starts_with("  ")), "{start}");
    assert!(exercise::show_solution(6).is_err());
}
