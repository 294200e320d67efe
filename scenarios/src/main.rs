//! The `scenarios` binary: the guided tour, `list`, `run`, `explain`, `exercise`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use scenarios::catalog::{self, Scenario};
use scenarios::explain::{self, Ask, Choice};
use scenarios::target::Outside;
use scenarios::tour::{self, Run, Selection};

/// Plays the exactly-once lessons: a payment service, a fault-injecting proxy
/// and a retrying client, started together on free loopback ports with a
/// temporary database. Each scenario prints what it shows and its numbers,
/// and the run ends with a verdict table. Without a command: the guided tour.
#[derive(Parser)]
#[command(
    version,
    after_help = "Logs: the parts log into parts.log in each lesson's directory (kept with --keep DIR);\n\
                  with RUST_LOG set (e.g. RUST_LOG=info) they go to stderr instead."
)]
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
    /// Wait for Enter after each lesson (time for the room's questions)
    #[arg(long, global = true)]
    pause: bool,
    /// Serve a live page for a projector on this loopback address (default
    /// 127.0.0.1:8765): money intended and moved as it happens, faults,
    /// replays, verdicts, one payment's story. It stays up until Ctrl-C.
    #[arg(long, value_name = "ADDR", global = true, num_args = 0..=1, default_missing_value = "127.0.0.1:8765")]
    live: Option<SocketAddr>,
    /// Play against this running service (any language) instead of starting this project's
    #[arg(long, value_name = "URL", global = true)]
    service_url: Option<String>,
    /// With --service-url: the request's shape and where its money is read (TOML; see the README)
    #[arg(long, value_name = "FILE", global = true, requires = "service_url")]
    target_file: Option<PathBuf>,
    /// With --service-url: the shell command that starts it, so lessons that kill it can run
    #[arg(long, value_name = "CMD", global = true, requires = "service_url")]
    service_cmd: Option<String>,
    /// Play every lesson against PostgreSQL: each lesson's service runs on a fresh
    /// database of this server (postgres://USER@HOST:PORT/DB, a user that may create
    /// databases; `.ci/postgres.sh start` prints one)
    #[arg(long, value_name = "URL", global = true, conflicts_with = "service_url")]
    db_url: Option<String>,
}

impl PlayArgs {
    fn run(&self, selection: Selection) -> Run {
        Run {
            selection,
            payments: self.payments,
            seed: self.seed.unwrap_or_else(chaos_proxy::config::fresh_seed),
            catalog: self.catalog.clone(),
            keep: self.keep.clone(),
            json: self.json,
            pause: self.pause,
            live: self.live,
            outside: None,
            db_url: self.db_url.clone(),
        }
    }

    /// The run, with the outside service of `--service-url` reached and read.
    async fn run_outside(&self, selection: Selection) -> anyhow::Result<Run> {
        let mut run = self.run(selection);
        if let Some(url) = &self.service_url {
            let outside = Outside::new(url, self.target_file.as_deref(), self.service_cmd.clone()).await?;
            run.outside = Some(Arc::new(outside));
        }
        Ok(run)
    }
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
    /// Play a lesson and draw one payment's story as a sequence diagram
    /// (client, proxy, service), from what the three recorded
    Explain(ExplainArgs),
    /// Internal: run the payment service as a child process (crash scenarios)
    #[command(name = "__serve-payment", hide = true)]
    ServePayment(ServeArgs),
}

#[derive(Args)]
struct ExplainArgs {
    /// The lesson (default: exactly-once)
    #[arg(default_value = "exactly-once")]
    lesson: String,
    /// Which payment, by its number in the lesson (default: the first most telling one)
    #[arg(long, conflicts_with = "key")]
    payment: Option<usize>,
    /// Which payment, by the key it sent
    #[arg(long)]
    key: Option<String>,
    /// Wait for Enter between the steps of the story
    #[arg(long)]
    step: bool,
    /// Print the story as Mermaid sequence-diagram text (slides, READMEs)
    #[arg(long)]
    mermaid: bool,
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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Command::ServePayment(_)) = cli.command {
        // The service child: its stderr is the lesson's log file.
        eo_core::logging::init("info");
    } else {
        scenarios::logs::init();
    }
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
        Some(Command::Explain(e)) => explain(&args, e).await,
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
            let selection = if all { Selection::All } else { Selection::Names(names) };
            tour::play_all(&args.run_outside(selection).await?, chosen).await
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
            tour::play_all(&args.run_outside(Selection::Tour).await?, tour).await
        }
    }
}

/// `scenarios explain`: the lesson, which payment, how to show it.
async fn explain(args: &PlayArgs, e: ExplainArgs) -> anyhow::Result<bool> {
    let catalog = catalog::load(args.catalog.as_deref())?;
    let Some(lesson) = catalog.into_iter().find(|s| s.name == e.lesson) else {
        bail!("no scenario {:?}; `scenarios list` shows them", e.lesson);
    };
    let choice = match (e.payment, e.key) {
        (Some(n), _) => Choice::Payment(n),
        (None, Some(k)) => Choice::Key(k),
        (None, None) => Choice::Telling,
    };
    let run = args.run(Selection::Tour);
    let ask = Ask {
        lesson,
        payments: run.payments,
        seed: run.seed,
        choice,
        step: e.step,
        mermaid: e.mermaid,
    };
    explain::run(ask).await
}

/// `scenarios exercise`: the ladder, its report, and whether every stage passed.
async fn exercise(args: &PlayArgs, reference: Option<u8>) -> anyhow::Result<bool> {
    let run = args.run_outside(Selection::Tour).await?;
    let settings = tour::settings(&run, None)?;
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
