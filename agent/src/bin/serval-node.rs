//! serval-node: the Serval node agent (`serval-node run`, configured from the environment as
//! a DaemonSet is), the standalone BGP speaker (`serval-node speaker --config FILE`), and the
//! local status table (`serval-node status`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use serval_agent::node::calico_env;
use serval_agent::standalone::{self, StandaloneConfig};
use serval_bgp::speaker::SpeakerHandle;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "serval-node", version, about = "Serval node agent")]
struct Cli {
    /// Log format.
    #[arg(long, env = "SERVAL_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent: BGP, routes, tunnels, IPAM tunnel addresses (env vars as in a
    /// DaemonSet; flags override).
    Run(Box<serval_agent::node::config::RunArgs>),
    /// Run the cluster controllers (node clean-up, IPAM GC; one active replica by Lease).
    Controllers(Box<serval_agent::controllers::ControllerArgs>),
    /// Install serval-cni and its configuration on the host (the DaemonSet's init step).
    InstallCni(Box<serval_agent::node::install_cni::InstallArgs>),
    /// Run the BGP speaker alone, configured from a YAML file (SIGHUP reloads it).
    Speaker {
        /// The configuration file.
        #[arg(long, short, env = "SERVAL_SPEAKER_CONFIG")]
        config: PathBuf,
    },
    /// Print this node's BGP peers as a table (like `calicoctl node status`).
    Status {
        /// The local status endpoint.
        #[arg(long, env = "SERVAL_STATUS_ADDRESS", default_value = "127.0.0.1:9179")]
        address: std::net::SocketAddr,
        /// Print the raw status JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Check a speaker configuration file and exit.
    CheckConfig {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Starts logging: SERVAL_LOG, else Felix's FELIX_LOGSEVERITYSCREEN, else info. Returns how
/// to set the BGP speaker's own level later (BGPConfiguration `logSeverityScreen`).
fn init_logs(format: &str) -> serval_agent::node::sequencer::BgpLogControl {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let felix = std::env::var("FELIX_LOGSEVERITYSCREEN")
        .ok()
        .and_then(|s| calico_env::log_filter(&s));
    let base = std::env::var("SERVAL_LOG")
        .ok()
        .filter(|s| EnvFilter::try_new(s).is_ok())
        .unwrap_or_else(|| felix.unwrap_or("info").to_string());
    let (filter, handle) = tracing_subscriber::reload::Layer::new(EnvFilter::new(&base));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    if format == "json" {
        registry.with(fmt.json()).init();
    } else {
        registry.with(fmt).init();
    }
    std::sync::Arc::new(move |level: Option<&str>| {
        let directives = match level {
            Some(l) => format!("{base},serval_bgp={l}"),
            None => base.clone(),
        };
        if let Err(e) = handle.reload(EnvFilter::new(directives)) {
            tracing::warn!(error = %e, "cannot change the BGP log level");
        }
    })
}

async fn run_speaker(path: PathBuf) -> anyhow::Result<()> {
    let mut cfg = StandaloneConfig::load(&path)?;
    let speaker = SpeakerHandle::start(cfg.speaker.clone())
        .await
        .context("starting the BGP speaker")?;
    standalone::apply(&speaker, None, &cfg).await?;
    let mut http = tokio::spawn(serval_agent::http::serve(cfg.http_address, speaker.clone()));
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = hup.recv() => match StandaloneConfig::load(&path) {
                Ok(new) if new.speaker != cfg.speaker || new.http_address != cfg.http_address => {
                    tracing::error!("speaker identity, listener and httpAddress need a restart; keeping the running configuration");
                }
                Ok(new) => {
                    standalone::apply(&speaker, Some(&cfg), &new).await?;
                    cfg = new;
                    tracing::info!("configuration reloaded");
                }
                Err(e) => tracing::error!("reload refused, keeping the running configuration: {e}"),
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            r = &mut http => {
                r.context("HTTP task")?.context("HTTP server")?;
                break;
            }
        }
    }
    speaker.shutdown().await?;
    Ok(())
}

/// The command line with Calico's variables applied as the flags they alias (`run` only),
/// and what was set but means nothing here.
fn command_line() -> anyhow::Result<(Cli, Vec<String>)> {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_none_or(|a| a != "run") {
        return Ok((Cli::parse_from(argv), Vec::new()));
    }
    let cmd = Cli::command();
    let run = cmd.find_subcommand("run").context("the run subcommand")?;
    let names: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .collect();
    let resolved = calico_env::resolve(run, &argv[2..], &|k| std::env::var(k).ok(), &names)
        .context("invalid configuration")?;
    argv.extend(resolved.flags);
    match Cli::try_parse_from(argv) {
        Ok(cli) => Ok((cli, resolved.unsupported)),
        Err(e) => {
            // Name the Calico variable behind a flag clap refused.
            let text = e.to_string();
            for (flag, calico) in &resolved.sources {
                if text.contains(flag.as_str()) {
                    eprintln!("note: {flag} was set from {calico}");
                }
            }
            e.exit()
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before the RIB grows: its large blocks get mappings of their own (see the module).
    let mapped = serval_bgp::allocator::map_large_blocks();
    let (cli, unsupported) = command_line()?;
    let bgp_log = init_logs(&cli.log_format);
    if !mapped {
        tracing::warn!("could not set the allocator's mmap threshold; a large RIB may fragment");
    }
    // A log setting that cannot be used is said, not silently replaced by the default.
    if let Ok(v) = std::env::var("SERVAL_LOG")
        && EnvFilter::try_new(&v).is_err()
    {
        tracing::warn!(variable = "SERVAL_LOG", value = %v, "not a log filter; using the default");
    } else if let Ok(v) = std::env::var("FELIX_LOGSEVERITYSCREEN")
        && std::env::var_os("SERVAL_LOG").is_none()
        && calico_env::log_filter(&v).is_none()
    {
        tracing::warn!(
            variable = "FELIX_LOGSEVERITYSCREEN",
            value = %v,
            "expected Debug, Info, Warning, Error, Fatal, Panic or None; using info"
        );
    }
    for name in unsupported {
        tracing::warn!(variable = %name, "set but not supported by serval-node; it has no effect");
    }
    match cli.command {
        Command::Run(args) => {
            let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let cfg =
                args.validate(&hostname)
                    .map_err(|e| {
                        // Name the Calico variable an operator actually set.
                        match calico_env::ALIASES.iter().find(|a| {
                            a.serval == e.variable && std::env::var_os(a.calico).is_some()
                        }) {
                            Some(a) => anyhow::anyhow!("{e} (set from {})", a.calico),
                            None => anyhow::anyhow!(e),
                        }
                    })
                    .context("invalid configuration")?;
            for variable in &cfg.without_effect {
                // Under the name the operator set.
                let name = calico_env::ALIASES
                    .iter()
                    .find(|a| a.serval == *variable && std::env::var_os(a.calico).is_some())
                    .map_or(*variable, |a| a.calico);
                tracing::warn!(variable = %name, "set but IPv6 is off (IP6 is none): it has no effect");
            }
            let mut term = signal(SignalKind::terminate())?;
            let shutdown = async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            };
            serval_agent::node::run(cfg, shutdown, bgp_log).await?;
            Ok(())
        }
        Command::Controllers(args) => {
            serval_agent::controllers::run(*args).await?;
            Ok(())
        }
        Command::InstallCni(args) => {
            for f in serval_agent::node::install_cni::install(&args)? {
                println!("installed {}", f.display());
            }
            // With the Kubernetes datastore the plugin gets its own identity from the start
            // (the agent keeps it fresh); the copied token above stays if that is refused.
            if args.datastore_type == "kubernetes" {
                match serval_agent::node::cni_token::install_minted(&args).await {
                    Ok(()) => println!("serval-cni kubeconfig: its own ServiceAccount's token"),
                    Err(e) => eprintln!("serval-cni kubeconfig: kept the copied token ({e})"),
                }
            }
            Ok(())
        }
        Command::Speaker { config } => run_speaker(config).await,
        Command::Status { address, json } => {
            let status = serval_agent::status_table::fetch(address)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
                return Ok(());
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            print!("{}", serval_agent::status_table::render_node(&status, now));
            Ok(())
        }
        Command::CheckConfig { config } => {
            StandaloneConfig::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
    }
}
