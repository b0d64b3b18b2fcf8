//! servalctl: Serval's calicoctl. Resource verbs against etcd or Kubernetes, and the node's
//! BGP status from its local endpoint.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serval_agent::ctl::{self, Verb, kinds};
use serval_agent::datastore::{AnyBackend, Datastore, EtcdBackend, KubeBackend};

#[derive(Parser)]
#[command(
    name = "servalctl",
    version,
    about = "Manage Serval resources and inspect nodes"
)]
struct Cli {
    /// `kubernetes` or `etcdv3`.
    #[arg(
        long,
        env = "DATASTORE_TYPE",
        default_value = "kubernetes",
        global = true
    )]
    datastore_type: String,
    /// etcd endpoints and TLS files (Calico's ETCD_* variables).
    #[command(flatten)]
    etcd: serval_agent::datastore::etcd::EtcdArgs,
    /// Kubeconfig for the Kubernetes datastore (default: in-cluster, then ~/.kube/config).
    #[arg(long, env = "KUBECONFIG", global = true)]
    kubeconfig: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Files {
    /// Resource files (YAML or JSON, several documents each); `-` reads stdin.
    #[arg(short, long = "filename", required = true)]
    filename: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Create or update resources from files.
    Apply(Files),
    /// Create resources; fails if one exists.
    Create(Files),
    /// Replace existing resources; fails if one does not exist.
    Replace(Files),
    /// Check resource files without writing anything.
    Validate(Files),
    /// Delete resources named in files, or KIND NAME.
    Delete {
        /// Files naming the resources.
        #[arg(short, long = "filename")]
        filename: Vec<PathBuf>,
        /// Kind, then name.
        args: Vec<String>,
        /// Namespace for namespaced kinds.
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Show resources.
    Get {
        /// The kind (`ippools`, `bgppeers`, `nodes`, ...).
        kind: String,
        /// Names (all when omitted).
        names: Vec<String>,
        /// `yaml`, `json`, `wide`, or a table by default.
        #[arg(short, long, default_value = "table")]
        output: String,
        /// Namespace (namespaced kinds).
        #[arg(short, long)]
        namespace: Option<String>,
        /// All namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Change one resource with a JSON merge patch (RFC 7386).
    Patch {
        /// Kind.
        kind: String,
        /// Name.
        name: String,
        /// The patch, e.g. '{"spec":{"natOutgoing":true}}'.
        #[arg(short, long)]
        patch: String,
        /// Namespace for namespaced kinds.
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Set (`k=v`) or remove (`k-`) labels on one resource.
    Label {
        /// Kind.
        kind: String,
        /// Name.
        name: String,
        /// Labels.
        #[arg(required = true)]
        labels: Vec<String>,
        /// Allow changing an existing label's value.
        #[arg(long)]
        overwrite: bool,
        /// Namespace for namespaced kinds.
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Node commands.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// BGP details from the local node.
    Bgp {
        #[command(subcommand)]
        command: BgpCommand,
    },
    /// IP address management.
    Ipam {
        #[command(subcommand)]
        command: IpamCommand,
    },
}

#[derive(Subcommand)]
enum BgpCommand {
    /// Every peer with negotiated capabilities and counters.
    Peers {
        /// The node's status endpoint.
        #[arg(long, env = "SERVAL_STATUS_ADDRESS", default_value = "127.0.0.1:9179")]
        address: std::net::SocketAddr,
    },
    /// Candidate routes, best first, with why the others are not best.
    Routes {
        /// The node's status endpoint.
        #[arg(long, env = "SERVAL_STATUS_ADDRESS", default_value = "127.0.0.1:9179")]
        address: std::net::SocketAddr,
        /// `ipv4-unicast` or `ipv6-unicast`.
        #[arg(long, default_value = "ipv4-unicast")]
        family: String,
        /// Only routes within this prefix.
        #[arg(long)]
        prefix: Option<String>,
    },
}

#[derive(Subcommand)]
enum IpamCommand {
    /// Pool (and with --show-blocks, block) utilisation.
    Show {
        /// Also list every block.
        #[arg(long)]
        show_blocks: bool,
    },
    /// Report leaks and inconsistencies (changes nothing).
    Check,
    /// Release addresses by hand.
    Release {
        /// The addresses.
        #[arg(long = "ip", required = true)]
        ips: Vec<std::net::IpAddr>,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// This node's BGP peers (from serval-node's local status endpoint).
    Status {
        /// The endpoint.
        #[arg(long, env = "SERVAL_STATUS_ADDRESS", default_value = "127.0.0.1:9179")]
        address: std::net::SocketAddr,
    },
}

async fn datastore(cli: &Cli) -> anyhow::Result<Datastore<AnyBackend>> {
    let backend = match cli.datastore_type.as_str() {
        "etcdv3" => {
            let etcd = cli.etcd.config();
            if etcd.endpoints.is_empty() {
                bail!("DATASTORE_TYPE=etcdv3 needs ETCD_ENDPOINTS (or --etcd-endpoints)");
            }
            etcd.validate()?;
            AnyBackend::Etcd(Box::new(
                EtcdBackend::connect_with(&etcd).await.with_context(|| {
                    format!("connecting to etcd at {}", etcd.endpoints.join(","))
                })?,
            ))
        }
        "kubernetes" => {
            if let Some(var) = cli.etcd.config().set_variable() {
                bail!(
                    "{var} is set but DATASTORE_TYPE is kubernetes (etcd settings apply to etcdv3 only)"
                );
            }
            AnyBackend::Kubernetes(match &cli.kubeconfig {
                Some(path) if !path.is_empty() => KubeBackend::connect_with(path)
                    .await
                    .with_context(|| format!("connecting to the Kubernetes API with {path}"))?,
                _ => KubeBackend::connect()
                    .await
                    .context("connecting to the Kubernetes API (in-cluster or ~/.kube/config)")?,
            })
        }
        other => bail!("DATASTORE_TYPE {other:?}: expected kubernetes or etcdv3"),
    };
    Ok(Datastore::new(backend))
}

fn read_docs(files: &[PathBuf]) -> anyhow::Result<Vec<ctl::Document>> {
    let mut docs = Vec::new();
    for f in files {
        let (name, text) = if f.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            ("-".to_string(), s)
        } else {
            let s = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            (f.display().to_string(), s)
        };
        docs.extend(ctl::parse(&name, &text)?);
    }
    Ok(docs)
}

async fn verb(cli: &Cli, verb: Verb, files: &[PathBuf]) -> anyhow::Result<()> {
    let docs = read_docs(files)?;
    if verb == Verb::Validate {
        for line in ctl::run_offline(&docs) {
            println!("{line}");
        }
        return Ok(());
    }
    let ds = datastore(cli).await?;
    for line in ctl::run(&ds, verb, &docs).await? {
        println!("{line}");
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Apply(f) => verb(&cli, Verb::Apply, &f.filename).await,
        Command::Create(f) => verb(&cli, Verb::Create, &f.filename).await,
        Command::Replace(f) => verb(&cli, Verb::Replace, &f.filename).await,
        Command::Validate(f) => verb(&cli, Verb::Validate, &f.filename).await,
        Command::Delete {
            filename,
            args,
            namespace,
        } => {
            if !filename.is_empty() {
                return verb(&cli, Verb::Delete, filename).await;
            }
            let [kind, names @ ..] = args.as_slice() else {
                bail!("delete needs -f FILE or KIND NAME...");
            };
            let kind =
                kinds::lookup(kind).ok_or_else(|| ctl::CtlError::UnknownKind(kind.clone()))?;
            if names.is_empty() {
                bail!("delete {}: name the resources to delete", kind.name);
            }
            let ds = datastore(&cli).await?;
            for name in names {
                (kind.delete)(&ds, namespace.clone(), name.clone()).await?;
                println!("{} {name:?} deleted", kind.name);
            }
            Ok(())
        }
        Command::Get {
            kind,
            names,
            output,
            namespace,
            all_namespaces,
        } => {
            let kind =
                kinds::lookup(kind).ok_or_else(|| ctl::CtlError::UnknownKind(kind.clone()))?;
            let ds = datastore(&cli).await?;
            let ns = match (kind.namespaced, all_namespaces) {
                (false, _) | (true, true) => None,
                (true, false) => Some(namespace.clone().unwrap_or_else(|| "default".into())),
            };
            let mut objects = (kind.list)(&ds, ns).await?;
            if !names.is_empty() {
                objects.retain(|o| {
                    names
                        .iter()
                        .any(|n| o["metadata"]["name"].as_str() == Some(n.as_str()))
                });
                if objects.is_empty() {
                    bail!("{} {} not found", kind.name, names.join(", "));
                }
            }
            match output.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&objects)?),
                "yaml" => {
                    for o in &objects {
                        print!("---\n{}", serde_saphyr::to_string(o)?);
                    }
                }
                "wide" => print!("{}", ctl::table(&kind, &objects, true)),
                "table" | "ps" => print!("{}", ctl::table(&kind, &objects, false)),
                other => bail!("-o {other}: expected yaml, json or wide"),
            }
            Ok(())
        }
        Command::Patch {
            kind,
            name,
            patch,
            namespace,
        } => {
            let kind =
                kinds::lookup(kind).ok_or_else(|| ctl::CtlError::UnknownKind(kind.clone()))?;
            let p: serde_json::Value =
                serde_json::from_str(patch).context("--patch is not valid JSON")?;
            let ds = datastore(&cli).await?;
            let what = ctl::patch(&ds, &kind, namespace.clone(), name, &p).await?;
            println!(
                "{} {name:?} {}",
                kind.name,
                if what == "unchanged" {
                    "unchanged"
                } else {
                    "patched"
                }
            );
            Ok(())
        }
        Command::Label {
            kind,
            name,
            labels,
            overwrite,
            namespace,
        } => {
            let kind =
                kinds::lookup(kind).ok_or_else(|| ctl::CtlError::UnknownKind(kind.clone()))?;
            let ds = datastore(&cli).await?;
            let current = (kind.list)(&ds, namespace.clone())
                .await?
                .into_iter()
                .find(|o| o["metadata"]["name"].as_str() == Some(name.as_str()))
                .ok_or_else(|| anyhow::anyhow!("{} {name} not found", kind.name))?;
            let p = ctl::label_patch(labels, &current["metadata"]["labels"], *overwrite)?;
            ctl::patch(&ds, &kind, namespace.clone(), name, &p).await?;
            println!("{} {name:?} labelled", kind.name);
            Ok(())
        }
        Command::Bgp {
            command: BgpCommand::Peers { address },
        } => {
            let status = serval_agent::status_table::fetch(*address)?;
            print!("{}", ctl::bgp::render_peers(&status.bgp));
            Ok(())
        }
        Command::Bgp {
            command:
                BgpCommand::Routes {
                    address,
                    family,
                    prefix,
                },
        } => {
            let mut path = format!("/routes?family={family}");
            if let Some(p) = prefix {
                path.push_str(&format!("&prefix={p}"));
            }
            let routes = ctl::bgp::get_all_routes(*address, &path)?;
            print!("{}", ctl::bgp::render_routes(&routes));
            Ok(())
        }
        Command::Ipam {
            command: IpamCommand::Show { show_blocks },
        } => {
            let ds = datastore(&cli).await?;
            print!("{}", ctl::ipam::show(&ds, *show_blocks).await?);
            Ok(())
        }
        Command::Ipam {
            command: IpamCommand::Check,
        } => {
            let ds = datastore(&cli).await?;
            let problems = ctl::ipam::check(&ds).await?;
            for p in &problems {
                println!("{p}");
            }
            println!("IPAM check: {} problem(s) found", problems.len());
            if !problems.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Ipam {
            command: IpamCommand::Release { ips },
        } => {
            let ds = datastore(&cli).await?;
            let released = ctl::ipam::release(&ds, ips).await?;
            for ip in ips {
                if released.contains(ip) {
                    println!("released {ip}");
                } else {
                    println!("{ip} was not allocated");
                }
            }
            Ok(())
        }
        Command::Node {
            command: NodeCommand::Status { address },
        } => {
            let status = serval_agent::status_table::fetch(*address)
                .with_context(|| format!("is serval-node running? (status endpoint {address})"))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            print!("{}", serval_agent::status_table::render_node(&status, now));
            Ok(())
        }
    }
}
