//! The `scenarios` binary: the guided tour, `list`, `run`, `exercise`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use scenarios::catalog::{self, Scenario};
use scenarios::play::{self, Outcome, Settings};
use scenarios::report;
use scenarios::target::Outside;

/// Plays the exactly-once lessons: a payment service, a fault-injecting proxy
/// and a retrying client, started together on free loopback ports with a
/// temporary database. Each scenario prints what it shows and its numbers,
/// and the run ends with a verdict table. Without a command: the guided tour.
#[derive(Parser)]
#[command(version, after_help = "Logs: set RUST_LOG (e.g. RUST_LOG=scenarios=debug).")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    play: PlayArgs,
}

#[derive(Args, Clone)]
struct PlayArgs {
    /// Payments per scenario (some lessons use fewer, see `scenarios list`)
    #[arg(long, default_value_t = 1000, global = true)]
    payments: usize,
    /// Seed for every fault, key and jitter: the same seed gives the same verdicts
    #[arg(long, global = true)]
    seed: Option<u64>,
    /// Print the results as JSON on stdout instead of the narrative
    #[arg(long, global = true)]
    json: bool,
    /// Keep each scenario's database, client history and ledger under DIR/<scenario>/
    #[arg(long, value_name = "DIR", global = true)]
    keep: Option<PathBuf>,
    /// Also load scenario files from DIR (a file replaces the built-in of the same name)
    #[arg(long, value_name = "DIR", global = true)]
    catalog: Option<PathBuf>,
    /// Play against this running service (any language) instead of starting this project's
    #[arg(long, value_name = "URL", global = true)]
    service_url: Option<String>,
    /// With --service-url: the request's shape and where its money is read (TOML; see the README)
    #[arg(long, value_name = "FILE", global = true, requires = "service_url")]
    target_file: Option<PathBuf>,
    /// With --service-url: the shell command that starts it, so lessons that kill it can run
    #[arg(long, value_name = "CMD", global = true, requires = "service_url")]
    service_cmd: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// List the scenarios, in tour order
    List,
    /// Play the named scenarios, or all of them
    Run {
        /// Scenario names (see `scenarios list`)
        names: Vec<String>,
        /// Play every scenario in the catalog
        #[arg(long)]
        all: bool,
    },
    /// The workshop's exercise: a ladder of five stages against
    /// payment-service/src/exercise.rs (`--dedup exercise`), stopping at the
    /// first that fails, with a hint
    Exercise {
        /// Play reference solution N instead of exercise.rs (0 is the starting state)
        #[arg(long, value_name = "N")]
        reference: Option<u8>,
        /// Print reference solution N as a diff from the starting state, and stop
        #[arg(long, value_name = "N")]
        show_solution: Option<usize>,
    },
    /// Internal: run the payment service as a child process (crash scenarios)
    #[command(name = "__serve-payment", hide = true)]
    ServePayment(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    db: PathBuf,
    #[command(flatten)]
    settings: payment_service::Settings,
}

/// Payments per scenario at most: enough for any lesson, bounded for a laptop.
const PAYMENTS_MAX: usize = 100_000;

fn main() -> std::process::ExitCode {
    eo_core::logging::init("warn");
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("scenarios: cannot start the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("scenarios: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<bool> {
    let args = cli.play.clone();
    match cli.command {
        Some(Command::ServePayment(serve)) => serve_payment(serve).await.map(|()| true),
        Some(Command::Exercise {
            reference,
            show_solution,
        }) => match show_solution {
            Some(n) => {
                print!("{}", scenarios::exercise::show_solution(n)?);
                Ok(true)
            }
            None => exercise(&args, reference).await,
        },
        Some(Command::List) => {
            for s in catalog::load(args.catalog.as_deref())? {
                let tour = s.tour.map_or("  ".to_owned(), |t| format!("{t:>2}"));
                let cap = s
                    .payments_max
                    .map_or(String::new(), |m| format!(" (at most {m} payments)"));
                println!("{tour}  {:<30} {:<16} {}{cap}", s.name, s.expect.headline(), s.title);
            }
            Ok(true)
        }
        Some(Command::Run { names, all }) => {
            let catalog = catalog::load(args.catalog.as_deref())?;
            let chosen: Vec<Scenario> = if all {
                if !names.is_empty() {
                    bail!("give scenario names or --all, not both");
                }
                catalog
            } else {
                if names.is_empty() {
                    bail!("name the scenarios to run (see `scenarios list`), or use --all");
                }
                let mut chosen = Vec::new();
                for name in &names {
                    match catalog.iter().find(|s| &s.name == name) {
                        Some(s) => chosen.push(s.clone()),
                        None => bail!("no scenario {name:?}; `scenarios list` shows them"),
                    }
                }
                chosen
            };
            let replay = if all {
                "scenarios run --all".to_owned()
            } else {
                format!("scenarios run {}", names.join(" "))
            };
            play_all(&args, chosen, &replay).await
        }
        None => {
            let tour: Vec<Scenario> = catalog::load(args.catalog.as_deref())?
                .into_iter()
                .filter(|s| s.tour.is_some())
                .collect();
            if !args.json {
                println!(
                    "The exactly-once tour: {} lessons, each with its own service, proxy and client.",
                    tour.len()
                );
                println!("(`scenarios list` shows them; `scenarios run NAME` plays one; `--help` for options.)");
            }
            play_all(&args, tour, "scenarios").await
        }
    }
}

/// Plays the scenarios; Ctrl-C stops after tearing down what is running
/// (children killed, temporary databases removed).
async fn play_all(args: &PlayArgs, chosen: Vec<Scenario>, replay: &str) -> anyhow::Result<bool> {
    tokio::select! {
        result = play_each(args, chosen, replay) => result,
        interrupted = tokio::signal::ctrl_c() => {
            interrupted?;
            eprintln!("\nscenarios: interrupted; nothing was kept (use --keep DIR to keep databases)");
            Ok(false)
        }
    }
}

/// The settings every lesson of a run shares, from the flags.
async fn settings(args: &PlayArgs) -> anyhow::Result<Settings> {
    if !(1..=PAYMENTS_MAX).contains(&args.payments) {
        bail!("--payments must be between 1 and {PAYMENTS_MAX}");
    }
    let outside = match &args.service_url {
        Some(url) => Some(Arc::new(
            Outside::new(url, args.target_file.as_deref(), args.service_cmd.clone()).await?,
        )),
        None => None,
    };
    Ok(Settings {
        payments: args.payments,
        seed: args.seed.unwrap_or_else(chaos_proxy::config::fresh_seed),
        keep: args.keep.clone(),
        exe: std::env::current_exe()?,
        outside,
    })
}

/// `scenarios exercise`: the ladder, its report, and whether every stage passed.
async fn exercise(args: &PlayArgs, reference: Option<u8>) -> anyhow::Result<bool> {
    let settings = settings(args).await?;
    let ladder = tokio::select! {
        ladder = scenarios::exercise::play_ladder(&settings, reference) => ladder?,
        interrupted = tokio::signal::ctrl_c() => {
            interrupted?;
            eprintln!("\nscenarios: interrupted");
            return Ok(false);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string(&ladder)?);
    } else {
        print!("{}", scenarios::exercise::render(&ladder));
    }
    Ok(ladder.pass)
}

async fn play_each(args: &PlayArgs, chosen: Vec<Scenario>, replay: &str) -> anyhow::Result<bool> {
    let settings = settings(args).await?;
    let seed = settings.seed;
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(chosen.len());
    let mut skipped: Vec<(String, String)> = Vec::new();
    for (i, s) in chosen.iter().enumerate() {
        let adapted = match &settings.outside {
            Some(outside) => match outside.skip_reason(s) {
                Some(why) => {
                    skipped.push((s.name.clone(), why));
                    continue;
                }
                None => outside.adapt(s),
            },
            None => s.clone(),
        };
        let outcome = play::play(&adapted, &settings).await?;
        if !args.json {
            print!("{}", report::narrative(i + 1, &outcome));
            if let Some(judged) = &outcome.judged {
                println!("   judged    {judged}");
            }
        }
        outcomes.push(outcome);
    }
    let all_pass = outcomes.iter().all(|o| o.pass);
    if args.json {
        let skipped: Vec<_> = skipped
            .iter()
            .map(|(name, why)| serde_json::json!({ "name": name, "why": why }))
            .collect();
        println!(
            "{}",
            serde_json::json!({ "seed": seed, "pass": all_pass, "scenarios": outcomes, "skipped": skipped })
        );
    } else {
        print!("{}", report::table(&outcomes, seed, replay));
        for (name, why) in &skipped {
            println!("skipped {name}: {why}");
        }
    }
    Ok(all_pass)
}

/// The hidden child mode: the payment service with crash injection.
async fn serve_payment(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.settings.config(args.db);
    config.validate().map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let shutdown = eo_core::shutdown::signal();
    let service = payment_service::Service::open(config).await?;
    println!("payment-service listening on http://{}", listener.local_addr()?);
    payment_service::serve(listener, service, shutdown).await
}
