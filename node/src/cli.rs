//! The `unitas` command line: `run`, `init`, `config check`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::example::{self, InitValues};
use crate::config::{Config, LogFormat, Overrides};
use crate::node::Node;

/// Unitas: a Matrix homeserver for a federated network of territories.
#[derive(Debug, Parser)]
#[command(name = "unitas", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node. With no config file and no flags: one territory `localhost:8448`, SQLite under
    /// ./data, client API on http://127.0.0.1:8008, federation on https://127.0.0.1:8448.
    Run(Settings),
    /// Write a fully commented config file and generate the signing key and TLS certificate.
    Init(InitArgs),
    /// Inspect configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Load-test a homeserver's client API (this node or any other): messages/s, send latency,
    /// sync wake-up delay, server RSS. The server must allow open registration and should have
    /// rate limits off.
    Bench(BenchArgs),
    /// The territory registry: authority keys, signed territory records.
    #[command(subcommand)]
    Registry(crate::registry_cli::RegistryCommand),
    /// The territories this node hosts.
    #[command(subcommand)]
    Territory(TerritoryCommand),
    /// Reports of events, rooms and users by this node's users, newest first, one JSON object
    /// a line.
    Reports {
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Config file (default: $UNITAS_CONFIG, else ./unitas.toml if present).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum TerritoryCommand {
    /// Add a territory to the config file, with a new signing key of its own (restart the node
    /// to serve it; the registry authority signs its record).
    Add {
        /// Territory code: ISO 3166-1 alpha-2 (`DK`; `UK` means `GB`) or a region (`eu`).
        code: String,
        /// The territory's server name (its users are `@name:<server_name>`; never changes).
        #[arg(long)]
        server_name: String,
        /// Display name (default: the shipped ISO 3166-1 or region name).
        #[arg(long)]
        name: Option<String>,
        /// The config file to add it to.
        #[arg(long, value_name = "FILE", default_value = "unitas.toml")]
        config: PathBuf,
    },
    /// Export a territory to move it to another node: turns it read-only here (a running node
    /// refuses its users' writes from then on), then writes its users, devices, keys, rooms
    /// with their history, media and signing key to a directory, with counts and hashes in
    /// `manifest.json`. Keep the directory secret: it holds the signing key.
    Export {
        /// Territory code.
        code: String,
        /// Directory to write (must not exist or be empty).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The registry record version in force (default: asked of the running node, else
        /// the config's records_dir).
        #[arg(long = "record-version", value_name = "N")]
        record_version: Option<u64>,
        /// A snapshot for a standby node: the territory keeps serving here (not read-only).
        /// Changes after the snapshot are not in it; a standby takes over from it only when
        /// this node is lost.
        #[arg(long)]
        standby: bool,
        /// Config file (default: $UNITAS_CONFIG, else ./unitas.toml if present).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Import an exported territory on this (new) node, before it starts serving it: checks
    /// the export against its manifest, adds the territory to the config with its exported
    /// key, writes the rows, checks and stores every room's events, copies the media, and
    /// validates the result (counts and hashes). Repeating it adds nothing.
    Import {
        /// The export directory.
        dir: PathBuf,
        /// Config file (default: $UNITAS_CONFIG, else ./unitas.toml if present).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Compare what this node's database holds of a territory with an export's manifest
    /// (counts and hashes of every table, room and media file).
    Validate {
        /// The export directory.
        dir: PathBuf,
        /// Config file (default: $UNITAS_CONFIG, else ./unitas.toml if present).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Client API base URL.
    #[arg(long, default_value = "http://127.0.0.1:8008")]
    url: String,
    /// Users to register.
    #[arg(long, default_value_t = 16)]
    users: usize,
    /// Messages for the concurrent run.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Concurrent senders.
    #[arg(long, default_value_t = 16)]
    senders: usize,
    /// Messages sent one at a time (latency).
    #[arg(long, default_value_t = 1_000)]
    sequential: usize,
    /// Sync wake-up round trips.
    #[arg(long, default_value_t = 200)]
    wakeups: usize,
    /// PID of the server, to report its resident memory.
    #[arg(long)]
    pid: Option<u32>,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a config (file < environment < flags) and print the effective settings, with
    /// secrets redacted. Exits non-zero when it is invalid.
    Check {
        /// Config file (default: --config, $UNITAS_CONFIG, or ./unitas.toml if present).
        file: Option<PathBuf>,
        #[command(flatten)]
        settings: Settings,
    },
}

/// Where settings come from: the file and the flags that override it.
#[derive(Debug, Args)]
struct Settings {
    /// Config file (TOML). Default: $UNITAS_CONFIG, else ./unitas.toml if it exists, else none.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory: SQLite database, keys, TLS certificate, media [server.data_dir].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB [storage.database].
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// Client API listen address [server.listen].
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// Federation (HTTPS) listen address [server.federation_listen].
    #[arg(long, value_name = "ADDR:PORT")]
    federation_listen: Option<SocketAddr>,
    /// Server name of the territory (only with zero or one configured territory)
    /// [server.server_name].
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// PEM certificate chain for the federation listener [server.tls_cert_file].
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert [server.tls_key_file].
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Log format [log.format].
    #[arg(long, value_enum)]
    log_format: Option<LogFormatArg>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Human,
    Json,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Where to write the config file.
    #[arg(long, value_name = "FILE", default_value = "unitas.toml")]
    config: PathBuf,
    /// Data directory for keys and data.
    #[arg(long, value_name = "DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Server name of the first territory.
    #[arg(long, value_name = "NAME", default_value = crate::config::DEFAULT_SERVER_NAME)]
    server_name: String,
    /// Code of the first territory (ISO 3166-1 alpha-2 like DK, or a region like eu).
    #[arg(long, value_name = "CODE", default_value = crate::config::DEFAULT_TERRITORY_CODE)]
    code: String,
    /// Overwrite an existing config file (keys are never overwritten).
    #[arg(long)]
    force: bool,
}

impl Settings {
    fn overrides(&self) -> Overrides {
        Overrides {
            data_dir: self.data_dir.clone(),
            database: self.database.clone(),
            listen: self.listen,
            federation_listen: self.federation_listen,
            server_name: self.server_name.clone(),
            tls_cert_file: self.tls_cert.clone(),
            tls_key_file: self.tls_key.clone(),
            log_format: self.log_format.map(|f| match f {
                LogFormatArg::Human => LogFormat::Human,
                LogFormatArg::Json => LogFormat::Json,
            }),
        }
    }

    /// The config file to read: the flag, `$UNITAS_CONFIG`, or `./unitas.toml` when present.
    fn config_file(&self, explicit: Option<&Path>) -> Option<PathBuf> {
        explicit
            .map(Path::to_owned)
            .or_else(|| self.config.clone())
            .or_else(crate::config::default_config_file)
    }

    fn load(
        &self,
        explicit: Option<&Path>,
    ) -> Result<crate::config::Loaded, crate::config::ConfigError> {
        Config::load(
            self.config_file(explicit).as_deref(),
            std::env::vars(),
            &self.overrides(),
        )
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(settings) => run(&settings),
        Command::Init(args) => init(&args),
        Command::Config(ConfigCommand::Check { file, settings }) => {
            check(file.as_deref(), &settings)
        }
        Command::Bench(args) => bench(args),
        Command::Registry(command) => crate::registry_cli::run(command),
        Command::Territory(TerritoryCommand::Add {
            code,
            server_name,
            name,
            config,
        }) => add_territory_to_config(&code, &server_name, name.as_deref(), &config, false),
        Command::Territory(TerritoryCommand::Export {
            code,
            out,
            record_version,
            standby,
            config,
        }) => crate::migration::export(&code, &out, record_version, standby, config.as_deref()),
        Command::Reports { limit, config } => {
            crate::migration::list_reports(limit, config.as_deref())
        }
        Command::Territory(TerritoryCommand::Import { dir, config }) => {
            crate::migration::import(&dir, config.as_deref())
        }
        Command::Territory(TerritoryCommand::Validate { dir, config }) => {
            crate::migration::validate(&dir, config.as_deref())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("unitas: error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// An error with its chain of causes on one line.
fn describe(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn run(settings: &Settings) -> Result<(), String> {
    let loaded = settings.load(None).map_err(|e| describe(&e))?;
    crate::telemetry::init(&loaded.config.log);
    if let Some(file) = &loaded.file {
        tracing::info!(file = %file.display(), "configuration loaded");
    }
    for key in &loaded.unknown_keys {
        tracing::warn!(key = %key, "unknown configuration key ignored");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        let node = Node::start(loaded.config).await.map_err(|e| describe(&e))?;
        let signalled = wait_for_signal();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "Unitas {} is running.", env!("CARGO_PKG_VERSION"));
        let _ = writeln!(out, "  Matrix client URL:  {}", node.client_url());
        let _ = writeln!(
            out,
            "  Federation (HTTPS): https://{}",
            node.federation_addr
        );
        for t in node.state.territories.all() {
            let _ = writeln!(
                out,
                "  Territory {}: server name {}",
                t.config.code, t.config.server_name
            );
        }
        let _ = writeln!(out, "  Database: {}", node.state.store.display_url());
        let _ = out.flush();
        drop(out);
        signalled.await;
        tracing::info!("shutting down: finishing in-flight requests");
        node.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Starts listening for SIGINT (Ctrl-C) and SIGTERM at once (before the node says it runs: a
/// signal sent right after must not find the default handler, which kills without a clean
/// shutdown); the returned future resolves when one arrives.
fn wait_for_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, int) {
                (Some(mut term), Some(mut int)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                (Some(mut one), None) | (None, Some(mut one)) => {
                    one.recv().await;
                }
                (None, None) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `unitas territory add`: appends a `[[territory]]` table to the config (checked by loading
/// the result before it replaces the file) and makes the territory's signing key.
/// `unitas territory add`: appends a `[[territory]]` to the config file (checked as the node
/// will read it) and makes its signing key unless the key file exists (an imported key).
pub fn add_territory_to_config(
    code: &str,
    server_name: &str,
    name: Option<&str>,
    file: &Path,
    replace_default: bool,
) -> Result<(), String> {
    let code = unitas_territory::TerritoryCode::parse(unitas_territory::catalog::iso_code(code))
        .map_err(|e| e.to_string())?;
    let name = name
        .map(str::to_owned)
        .or_else(|| unitas_territory::catalog::name_of(code.as_str()).map(str::to_owned));
    let loaded = Config::load(Some(file), std::env::vars(), &Overrides::default())
        .map_err(|e| describe(&e))?;
    let config = loaded.config;
    if config.territories.is_empty() && !replace_default {
        return Err(format!(
            "{} lists no [[territory]]: the node serves its default territory ({}) implicitly, \
             and adding one would replace it; list it first (unitas init writes it)",
            file.display(),
            config.server.server_name
        ));
    }
    if let Some(taken) = config
        .territories
        .iter()
        .find(|t| t.code == code || t.server_name == server_name)
    {
        return Err(format!(
            "territory {} ({}) is already configured",
            taken.code, taken.server_name
        ));
    }
    let key_file = config
        .server
        .data_dir
        .join("keys")
        .join(format!("{code}.signing.key"));
    let mut text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    // An empty list written out in full (`territory = []`, as a serialized config has it)
    // would clash with the table array appended below.
    if text.lines().any(|l| l.trim() == "territory = []") {
        text = text
            .lines()
            .filter(|l| l.trim() != "territory = []")
            .map(|l| format!("{l}\n"))
            .collect();
    }
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let quote = |value: &str| toml::Value::String(value.to_owned()).to_string();
    text.push_str(&format!(
        "\n[[territory]]\ncode = {}\nserver_name = {}\n",
        quote(code.as_str()),
        quote(server_name)
    ));
    if let Some(name) = &name {
        text.push_str(&format!("name = {}\n", quote(name)));
    }
    text.push_str(&format!(
        "signing_key_file = {}\n",
        quote(&key_file.display().to_string())
    ));
    // Check the result as the node will read it before it replaces the file.
    let draft = file.with_extension("toml.new");
    std::fs::write(&draft, &text).map_err(|e| format!("{}: {e}", draft.display()))?;
    if let Err(err) = Config::load(Some(&draft), std::env::vars(), &Overrides::default()) {
        let _ = std::fs::remove_file(&draft);
        return Err(describe(&err));
    }
    let (key, _) =
        unitas_federation::SigningKey::load_or_generate(&key_file).map_err(|e| describe(&e))?;
    std::fs::rename(&draft, file).map_err(|e| format!("{}: {e}", file.display()))?;
    println!(
        "Added territory {code} ({server_name}) to {}; signing key {}: {}",
        file.display(),
        key.key_id(),
        key_file.display()
    );
    println!("Restart the node to serve it; the registry authority signs its record.");
    Ok(())
}

fn init(args: &InitArgs) -> Result<(), String> {
    if args.config.exists() && !args.force {
        return Err(format!(
            "{} exists; use --force to overwrite it",
            args.config.display()
        ));
    }
    let code = unitas_territory::TerritoryCode::parse(&args.code).map_err(|e| e.to_string())?;
    let key_file = args
        .data_dir
        .join("keys")
        .join(format!("{code}.signing.key"));
    let text = example::render(&InitValues {
        data_dir: Some(args.data_dir.display().to_string()),
        territory: Some((
            code.to_string(),
            args.server_name.clone(),
            key_file.display().to_string(),
        )),
    });
    // Validate what would be written before writing anything.
    let mut config: Config = toml::from_str(&text).map_err(|e| format!("generated config: {e}"))?;
    config.validate().map_err(|e| describe(&e))?;
    config.server.data_dir = args.data_dir.clone();

    let (key, generated) =
        unitas_federation::SigningKey::load_or_generate(&key_file).map_err(|e| describe(&e))?;
    let hosts = vec![
        args.server_name
            .split(':')
            .next()
            .unwrap_or(&args.server_name)
            .to_owned(),
    ];
    crate::tls::ensure_self_signed(&args.data_dir, &hosts).map_err(|e| describe(&e))?;
    std::fs::write(&args.config, text).map_err(|e| format!("{}: {e}", args.config.display()))?;

    println!("Wrote {}", args.config.display());
    println!(
        "Signing key {} for territory {code} ({}): {}{}",
        key.key_id(),
        args.server_name,
        key_file.display(),
        if generated {
            ""
        } else {
            " (existing key kept)"
        }
    );
    let (cert, _) = crate::tls::self_signed_paths(&args.data_dir);
    println!("Federation TLS certificate: {}", cert.display());
    println!(
        "Start the node with: unitas run --config {}",
        args.config.display()
    );
    Ok(())
}

fn bench(args: BenchArgs) -> Result<(), String> {
    // One thread: the driver needs well under a core, and its tasks then never wake each other
    // across threads (fewer context switches taken from the server on a shared machine).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime
        .block_on(crate::bench::run(crate::bench::BenchOptions {
            url: args.url,
            users: args.users,
            messages: args.messages,
            senders: args.senders,
            sequential: args.sequential,
            wakeups: args.wakeups,
            pid: args.pid,
        }))
        .map(|report| report.print())
}

fn check(file: Option<&Path>, settings: &Settings) -> Result<(), String> {
    let loaded = settings.load(file).map_err(|e| describe(&e))?;
    match &loaded.file {
        Some(path) => println!("# {}: valid", path.display()),
        None => println!("# no config file: defaults, environment and flags are valid"),
    }
    for key in &loaded.unknown_keys {
        println!("# warning: unknown key `{key}` is ignored");
    }
    println!("# Effective settings (secrets redacted):\n");
    print!("{}", loaded.config.to_redacted_toml());
    Ok(())
}
