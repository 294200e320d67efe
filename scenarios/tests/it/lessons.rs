//! Every built-in scenario, with 50 payments and a fixed seed.

use scenarios::catalog;
use scenarios::play::{self, Settings};

const SEED: u64 = 20_261_124;

fn settings() -> Settings {
    Settings {
        payments: 50,
        seed: SEED,
        keep: None,
        exe: env!("CARGO_BIN_EXE_scenarios").into(),
        outside: None,
        db_url: None,
        observer: None,
    }
}

async fn lesson(name: &str) {
    let all = catalog::load(None).expect("the built-in catalog parses");
    let scenario = all
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name}"));
    let outcome = play::play(scenario, &settings()).await.expect("the scenario runs");
    assert!(
        outcome.pass,
        "{name}: {:?} (expected {:?}); problems: {:?}; metrics: {:?}",
        outcome.verdict, outcome.expected, outcome.problems, outcome.metrics
    );
}

macro_rules! lessons {
    ($($test:ident => $name:literal,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                lesson($name).await;
            }
        )*

        #[test]
        fn every_built_in_scenario_has_a_test() {
            let tested = [$($name),*];
            for s in catalog::load(None).expect("catalog") {
                assert!(tested.contains(&s.name.as_str()), "add {} to the lessons! list", s.name);
            }
        }
    };
}

lessons! {
    stable_network => "stable-network",
    at_most_once => "at-most-once",
    at_least_once => "at-least-once",
    keys_ignored => "keys-ignored",
    exactly_once => "exactly-once",
    new_key_per_retry => "new-key-per-retry",
    concurrent_check_then_insert => "concurrent-check-then-insert",
    concurrent_unique => "concurrent-unique",
    crash_after_commit => "crash-after-commit",
    key_reused => "key-reused",
    slow_network => "slow-network",
    proxy_down => "proxy-down",
    client_crash_resume => "client-crash-resume",
    client_crash_restart => "client-crash-restart",
    replicas_memory => "replicas-memory",
    restart_memory => "restart-memory",
    replicas_unique => "replicas-unique",
    dual_write => "dual-write",
    redelivery_naive_consumer => "redelivery-naive-consumer",
    outbox_idempotent_consumer => "outbox-idempotent-consumer",
    batch_one_key => "batch-one-key",
    batch_derived_keys => "batch-derived-keys",
    redelivery_storm => "redelivery-storm",
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_the_same_verdicts() {
    let all = catalog::load(None).expect("catalog");
    for name in ["at-most-once", "at-least-once"] {
        let scenario = all.iter().find(|s| s.name == name).expect("scenario");
        let first = play::play(scenario, &settings()).await.expect("first run");
        let second = play::play(scenario, &settings()).await.expect("second run");
        assert_eq!(first.verdict, second.verdict, "{name}");
        assert_eq!(first.pass, second.pass, "{name}");
    }
}
