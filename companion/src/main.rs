//! isogroup-companion: the control plane. Serves the versioned route table
//! (long-poll), the admin API, resolve, health and metrics; validates and
//! explains table files.

mod doctor;
mod explain;
mod http;
mod kube;
mod metrics;
mod pollers;
mod propagation;
mod random;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use isogroup_core::{Limits, RawTable, Table};
use tokio::sync::watch;

use crate::kube::store::KubeStore;
use crate::metrics::Metrics;
use crate::store::etcd::EtcdStore;
use crate::store::file::FileStore;
use crate::store::{Served, Store};

#[derive(Parser)]
/// `--version` also names what this companion speaks, so an operator can
/// match it with a filter build: the table's schema (`/v1/table`) and the
/// fields it serves beyond groups and services, and the poll protocol
/// (`?wait=` long-poll, `ETag`/`If-None-Match` or `?after=`, `?epoch=` with
/// `X-Isogroup-Epoch`).
#[command(
    name = "isogroup-companion",
    version = concat!(env!("CARGO_PKG_VERSION"), " (table: v1 epoch sources rules; protocol: long-poll etag epoch delta gzip)"),
    about = "isogroup control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Command {
    /// Serve the table file over HTTP.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// The route table (JSON). Watched for edits; admin writes land here.
        #[arg(long, required_unless_present_any = ["kubernetes", "etcd"], conflicts_with_all = ["kubernetes", "etcd"])]
        table: Option<PathBuf>,
        /// Keep the table in etcd instead (replicated: every replica serves
        /// the same epoch and version): comma-separated endpoint URLs.
        #[arg(long, value_delimiter = ',', conflicts_with = "kubernetes")]
        etcd: Vec<String>,
        /// Where in etcd the table lives (see docs/companion.md, "etcd store").
        #[arg(long, default_value = "/isogroup/")]
        etcd_prefix: String,
        /// etcd: for how long after this replica loads the store a poll
        /// proving a rollback (its epoch, a version above the one served)
        /// mints a new epoch (once); after it such polls only warn.
        #[arg(long, default_value_t = store::etcd::ROLLBACK_WINDOW.as_secs())]
        rollback_window_s: u64,
        /// Build the table from the cluster instead (pods labelled
        /// isogroup.io/group, ready endpoints, DestinationRule subsets,
        /// IsolationGroup objects). In-cluster or kubeconfig credentials.
        /// Replicas elect a leader on a Lease; only it serves tables.
        #[arg(long)]
        kubernetes: bool,
        /// Kubernetes: the namespace of the Lease (and of this pod); default
        /// the client's (in a pod: its own).
        #[arg(long, env = "POD_NAMESPACE")]
        namespace: Option<String>,
        /// Kubernetes: this replica's pod (the Lease holder's identity; the
        /// leader labels it isogroup.io/leader=true).
        #[arg(long, env = "POD_NAME")]
        pod_name: Option<String>,
        /// Kubernetes: keep each service's Istio objects (DestinationRule
        /// subsets, a VirtualService, and in cluster-header mode an
        /// EnvoyFilter) in step with its lanes, by server-side apply.
        #[arg(long, value_enum, default_value = "off")]
        istio: IstioFlag,
        /// Kubernetes with --istio cluster-header: the mesh's root namespace
        /// (meshConfig.rootNamespace), where EnvoyFilters reach every proxy.
        #[arg(long, default_value = "istio-system")]
        istio_root_namespace: String,
        /// Kubernetes: this installation's id (a label value), on every
        /// object it owns (`isogroup.io/installation`); it owns only objects
        /// with it and the managed-by label. Default: the namespace.
        #[arg(long, value_parser = parse_installation)]
        installation: Option<String>,
        /// Kubernetes with --istio: compare the Istio objects it owns with
        /// the watched ones this often even without a change (seconds).
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        resync_s: u64,
        /// Kubernetes: the Lease's duration; a leader that cannot renew for
        /// two thirds of it steps down.
        #[arg(long, default_value_t = 15_000)]
        lease_ms: u64,
        /// Kubernetes: a leader whose watches have failed this long steps
        /// down (its table may be that old); at least the Lease's duration
        /// (seconds).
        #[arg(long, default_value_t = 30)]
        max_stale_s: u64,
        /// Kubernetes source: how long a new subset must exist before its
        /// group enters the table (so proxies have the subset first).
        #[arg(long, default_value_t = 5000)]
        settle_ms: u64,
        /// File holding the admin bearer token (else env ISOGROUP_TOKEN;
        /// neither: the admin API is off).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// File holding a bearer token every propagation report (`POST
        /// /v1/reports`) must carry; without it reports need none.
        #[arg(long)]
        report_token_file: Option<PathBuf>,
        /// The base group for a table that names none.
        #[arg(long, default_value = "base")]
        base_group: String,
        /// The largest table accepted, in bytes (also the body limit of
        /// `PUT /v1/table`).
        #[arg(long, default_value_t = Limits::default().max_table_bytes)]
        max_table_bytes: usize,
        /// The gateway's full join URL (e.g.
        /// `https://gw.test.example/.isogroup/join`): the console links each
        /// lane to it with `?lane=<group>`.
        #[arg(long, value_parser = parse_gateway_url)]
        gateway_url: Option<String>,
        /// Held long-polls from proxies (x-isogroup-poller) get a new version at most once per this many
        /// milliseconds (a burst of changes coalesces into its last
        /// version); 0 turns it off. Writes, `GET /v1/table` without
        /// `after`, `/v1/resolve` and the console see each change at once.
        #[arg(long, default_value_t = 1000)]
        min_publish_ms: u64,
    },
    /// Validate a table file: print each error, exit non-zero when invalid.
    Check {
        file: PathBuf,
        #[arg(long, default_value = "base")]
        base_group: String,
    },
    /// Print the Istio objects the table's services need (for GitOps; with
    /// `serve --kubernetes --istio …` the companion keeps them itself):
    /// DestinationRule subsets and a VirtualService per service, in its own
    /// namespace, plus (cluster-header mode) an EnvoyFilter in the root
    /// namespace.
    IstioManifests {
        file: PathBuf,
        /// The namespace of services whose clusters are not in Istio form.
        #[arg(long)]
        namespace: String,
        #[arg(long, value_enum, default_value = "target-header")]
        mode: kube::istio::Mode,
        /// Port for services whose clusters are not in Istio form.
        #[arg(long, default_value_t = 80)]
        default_port: u16,
        /// The mesh's root namespace (meshConfig.rootNamespace), where an
        /// EnvoyFilter applies to every proxy.
        #[arg(long, default_value = "istio-system")]
        root_namespace: String,
        #[arg(long, default_value = "base")]
        base_group: String,
    },
    /// Print a synthetic table (services `svc-<i>`, groups `g-<j>`), for
    /// benchmarks and load tests.
    Synth {
        #[arg(long)]
        services: usize,
        #[arg(long, default_value_t = 100)]
        groups: usize,
    },
    /// `epoch --new`: give the store a new epoch, newer than the one it
    /// has, so every filter takes its table again (after restoring etcd
    /// from a backup). Replicas serve it at once; the table is unchanged.
    Epoch {
        #[arg(long, required = true)]
        new: bool,
        /// The etcd endpoints (comma-separated), as for `serve --etcd`.
        #[arg(long, value_delimiter = ',', required = true)]
        etcd: Vec<String>,
        #[arg(long, default_value = "/isogroup/")]
        etcd_prefix: String,
    },
    /// Ask a running companion where lanes break (`GET /v1/propagation`):
    /// print the edges worst first with what to do; exit 0 when every
    /// workload's drop share is at most --max-drop-share, 1 when some
    /// workload's is above it, 2 when the companion cannot be asked.
    Doctor {
        /// The companion's address, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        url: String,
        /// The largest drop share (dropped + healed over traced requests)
        /// a workload may have, 0 to 1.
        #[arg(long, default_value_t = 0.0, value_parser = doctor::parse_share)]
        max_drop_share: f64,
        /// A bearer token to send (when a proxy in front asks for one).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Print, for every service and group, where requests go and why.
    Explain {
        file: PathBuf,
        #[arg(long, default_value = "base")]
        base_group: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve {
            listen,
            table,
            etcd,
            etcd_prefix,
            rollback_window_s,
            kubernetes: _,
            namespace,
            pod_name,
            lease_ms,
            max_stale_s,
            istio,
            istio_root_namespace,
            installation,
            resync_s,
            settle_ms,
            token_file,
            report_token_file,
            base_group,
            max_table_bytes,
            gateway_url,
            min_publish_ms,
        } => {
            let limits = Limits { max_table_bytes, ..Limits::default() };
            let source = match (table, etcd.is_empty()) {
                (Some(path), _) => Source::File(path),
                (None, false) => Source::Etcd {
                    endpoints: etcd,
                    prefix: etcd_prefix,
                    rollback_window: Duration::from_secs(rollback_window_s),
                },
                (None, true) if Duration::from_secs(max_stale_s) < Duration::from_millis(lease_ms.max(1_000)) => {
                    eprintln!(
                        "error: invalid value '{max_stale_s}' for '--max-stale-s <MAX_STALE_S>': must be at least the \
                         Lease's duration (--lease-ms {lease_ms}), or a leader would step down before a standby may take over"
                    );
                    return ExitCode::from(2);
                }
                (None, true) => Source::Kubernetes {
                    settle: Duration::from_millis(settle_ms),
                    namespace,
                    pod_name,
                    lease: Duration::from_millis(lease_ms.max(1_000)),
                    max_stale: Duration::from_secs(max_stale_s),
                    installation,
                    resync: Duration::from_secs(resync_s),
                    istio: match istio {
                        IstioFlag::Off => None,
                        IstioFlag::TargetHeader => Some((kube::istio::Mode::TargetHeader, istio_root_namespace)),
                        IstioFlag::ClusterHeader => Some((kube::istio::Mode::ClusterHeader, istio_root_namespace)),
                    },
                },
            };
            serve(
                listen,
                source,
                Options { token_file, report_token_file, base: base_group, limits, gateway_url, min_publish_ms },
            )
        }
        Command::Check { file, base_group } => match load_table(&file, &base_group) {
            Ok(t) => {
                println!("{}: valid ({} services, {} groups)", file.display(), t.service_count(), t.group_count());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in errors {
                    println!("{}: {e}", file.display());
                }
                ExitCode::FAILURE
            }
        },
        Command::IstioManifests { file, namespace, mode, default_port, root_namespace, base_group } => {
            match load_raw(&file, &base_group) {
                Ok((raw, t)) => {
                    let base = t.group_name(t.base()).to_owned();
                    let opts =
                        kube::istio::Options { mode, base: &base, root_namespace: &root_namespace, installation: None };
                    let objects: Vec<serde_json::Value> = kube::istio::targets_of(&t, &raw, &namespace, default_port)
                        .iter()
                        .flat_map(|target| kube::istio::render_target(target, &opts))
                        .collect();
                    print!("{}", kube::istio::to_yaml_stream(&objects));
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    for e in errors {
                        eprintln!("{}: {e}", file.display());
                    }
                    ExitCode::FAILURE
                }
            }
        }
        Command::Synth { services, groups } => {
            match serde_json::to_string(&isogroup_core::synth::table(services, groups)) {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Epoch { new: _, etcd, etcd_prefix } => {
            let made = tokio::runtime::Runtime::new()
                .map_err(|e| e.to_string())
                .and_then(|rt| rt.block_on(store::etcd::new_epoch_by_hand(&etcd, &etcd_prefix)));
            match made {
                Ok(epoch) => {
                    println!("{etcd_prefix}: new epoch {epoch}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Doctor { url, max_drop_share, token_file } => doctor::run(&url, max_drop_share, token_file.as_deref()),
        Command::Explain { file, base_group } => match load_table(&file, &base_group) {
            Ok(t) => {
                print!("{}", explain::explain(&t));
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in errors {
                    eprintln!("{}: {e}", file.display());
                }
                ExitCode::FAILURE
            }
        },
    }
}

fn load_raw(file: &std::path::Path, base: &str) -> Result<(RawTable, Table), Vec<String>> {
    let limits = Limits::default();
    let bytes = std::fs::read(file).map_err(|e| vec![e.to_string()])?;
    let raw = RawTable::from_json(&bytes, &limits).map_err(|e| vec![e.to_string()])?;
    let table = Table::check(&raw, base, &limits)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    Ok((raw, table))
}

fn load_table(file: &std::path::Path, base: &str) -> Result<Table, Vec<String>> {
    let limits = Limits::default();
    let bytes = std::fs::read(file).map_err(|e| vec![e.to_string()])?;
    let raw = RawTable::from_json(&bytes, &limits).map_err(|e| vec![e.to_string()])?;
    Table::check(&raw, base, &limits).map_err(|errors| errors.iter().map(ToString::to_string).collect())
}

/// Where the table comes from.
enum Source {
    File(PathBuf),
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
        rollback_window: Duration,
    },
    Kubernetes {
        settle: Duration,
        namespace: Option<String>,
        pod_name: Option<String>,
        lease: Duration,
        max_stale: Duration,
        installation: Option<String>,
        resync: Duration,
        istio: Option<(kube::istio::Mode, String)>,
    },
}

/// `serve --istio`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum IstioFlag {
    Off,
    TargetHeader,
    ClusterHeader,
}

/// `--gateway-url`: an absolute http(s) URL with no query or fragment (the
/// console appends `?lane=<group>`).
/// `--installation`: a Kubernetes label value (at most 63 characters,
/// alphanumerics with `-`, `_`, `.` inside), not empty.
fn parse_installation(id: &str) -> Result<String, String> {
    let inner = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    let ends = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    if id.len() > 63 || !id.bytes().all(inner) || !ends(id.as_bytes().first()) || !ends(id.as_bytes().last()) {
        return Err(format!(
            "{id:?} is not a Kubernetes label value (1-63 characters: letters, digits, '-', '_', '.', \
             beginning and ending with a letter or digit)"
        ));
    }
    Ok(id.to_owned())
}

fn parse_gateway_url(text: &str) -> Result<String, String> {
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .ok_or("must start with http:// or https://")?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("names no host".into());
    }
    if text.contains(['?', '#']) || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must have no query, fragment or spaces (the console adds ?lane=<group>)".into());
    }
    Ok(text.to_owned())
}

/// `serve`'s settings beyond where it listens and what it serves.
struct Options {
    token_file: Option<PathBuf>,
    report_token_file: Option<PathBuf>,
    base: String,
    limits: Limits,
    gateway_url: Option<String>,
    min_publish_ms: u64,
}

fn serve(listen: SocketAddr, source: Source, options: Options) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(listen, source, options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(listen: SocketAddr, source: Source, options: Options) -> Result<(), String> {
    let Options { token_file, report_token_file, base, limits, gateway_url, min_publish_ms } = options;
    let token = http::auth::Token::load(token_file.as_deref(), std::env::var("ISOGROUP_TOKEN").ok())
        .map_err(|e| format!("token file: {e}"))?;
    let report_token = match &report_token_file {
        Some(path) => Some(
            http::auth::Token::load(Some(path), None)
                .map_err(|e| format!("--report-token-file: {e}"))?
                .ok_or("--report-token-file: the file is empty")?,
        ),
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let served = Served::new(base, limits, metrics.clone()).map_err(|e| format!("--base-group: {e}"))?;
    served.set_min_publish(std::time::Duration::from_millis(min_publish_ms));
    // Kubernetes: what hands the Lease back on shutdown.
    let mut release = None;
    // etcd: every replica's reports, shared through etcd.
    let mut shared_reports = None;
    let (store, source): (Arc<dyn Store>, String) = match source {
        Source::File(path) => {
            let file = FileStore::open(path, served).map_err(|e| e.to_string())?;
            tokio::spawn(file.clone().watch());
            let source = file.path().display().to_string();
            (file, source)
        }
        Source::Etcd { endpoints, prefix, rollback_window } => {
            let source = format!("etcd {} {prefix}", endpoints.join(","));
            let shared = propagation::shared::Shared::connect(&endpoints, &prefix, metrics.clone()).await?;
            shared_reports = Some(Arc::new(shared));
            let etcd = EtcdStore::connect(endpoints, prefix, served, rollback_window).await?;
            tokio::spawn(etcd.clone().follow());
            (etcd, source)
        }
        Source::Kubernetes { settle, namespace, pod_name, lease, max_stale, installation, resync, istio } => {
            kube::source::install_crypto();
            let client = ::kube::Client::try_default().await.map_err(|e| format!("kubernetes client: {e}"))?;
            let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
            let identity = pod_name
                .or_else(|| std::env::var("HOSTNAME").ok())
                .ok_or("--pod-name (or env POD_NAME) is required with --kubernetes")?;
            let mut opts = kube::source::Options::new(settle, namespace.clone());
            opts.istio = istio;
            opts.resync = resync;
            opts.instance.clone_from(&identity);
            if let Some(id) = installation {
                opts.installation = id;
            }
            // The installation's own Lease, record, runtime data and leader label.
            let names = kube::names::Names::new(&opts.installation, &namespace);
            let id = opts.installation.clone();
            let renew_deadline = lease * 2 / 3;
            let kube = Arc::new(
                KubeStore::new(served)
                    .with_runtime_writes(client.clone(), &namespace, &names.runtime)
                    .with_renew_deadline(renew_deadline),
            );
            let mut lease_cfg = kube::leader::LeaseConfig::new(namespace.clone(), identity.clone());
            lease_cfg.name.clone_from(&names.lease);
            lease_cfg.leader_label.clone_from(&names.leader_label);
            lease_cfg.duration = lease;
            lease_cfg.renew_deadline = renew_deadline;
            lease_cfg.retry = lease / 7;
            lease_cfg.max_stale = max_stale;
            tokio::spawn(kube::source::run(client.clone(), kube.clone(), metrics.clone(), opts));
            tokio::spawn(kube::leader::run(client.clone(), kube.clone(), lease_cfg.clone(), metrics.clone()));
            let recheck = Duration::from_secs(5);
            let timing = kube::watch::Timing::default();
            tokio::spawn(kube::events::run(client.clone(), kube.clone(), id, identity.clone(), recheck, timing));
            release = Some((client, kube.clone(), lease_cfg));
            let lease_name = &names.lease;
            (kube, format!("kubernetes (lease {namespace}/{lease_name} as {identity})"))
        }
    };
    // Every store deletes expired bindings (Kubernetes: the leader, in
    // ConfigMap isogroup-runtime).
    tokio::spawn(store::expiry::expire_sources(store.clone()));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let reports = Arc::new(propagation::Propagation::new(metrics.clone(), report_token, shared_reports.clone()));
    if let Some(shared) = shared_reports {
        tokio::spawn(shared.run(reports.clone()));
    }
    let api =
        Arc::new(http::Api::new(store.clone(), token, metrics, gateway_url, shutdown_rx).with_propagation(reports));
    if api.token.is_none() {
        tracing::warn!("no admin token (--token-file or ISOGROUP_TOKEN): the admin API is off");
    }
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("listen on {listen}: {e}"))?;
    let current = store.served().current();
    tracing::info!(%listen, version = current.version, epoch = ?current.epoch, %source, "serving");
    axum::serve(listener, http::router(api).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            if let Some((client, kube, cfg)) = release {
                kube::leader::release(client, &kube, &cfg).await;
            }
            let _ = shutdown_tx.send(true);
        })
        .await
        .map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]

    use clap::{CommandFactory, Parser};

    use super::{parse_gateway_url, Cli, Command, IstioFlag};

    /// Each companion package under deploy/kubernetes, as `kubectl kustomize`
    /// renders it, runs `serve` with flags this companion parses, for the
    /// source its name says (a typo in a package's args fails here, not in a
    /// crash loop on a cluster).
    #[test]
    fn every_companion_package_serves_its_source() {
        let packages = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/companion");
        let cases = [
            ("file", "file /data/table.json"),
            ("etcd", "etcd 3 endpoints"),
            ("kubernetes-target-header", "kubernetes TargetHeader"),
            ("kubernetes-cluster-header", "kubernetes ClusterHeader"),
        ];
        for (package, want) in cases {
            let objects = crate::kube::fake::kustomize(&packages.join(package));
            let deployment = objects
                .iter()
                .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "isogroup-companion")
                .unwrap_or_else(|| panic!("{package}: no Deployment isogroup-companion"));
            let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].as_array().unwrap();
            let args = args.iter().map(|a| a.as_str().unwrap());
            let cli = Cli::try_parse_from(std::iter::once("isogroup-companion").chain(args))
                .unwrap_or_else(|e| panic!("{package}: the companion refuses its args: {e}"));
            let Command::Serve { table, etcd, kubernetes, istio, .. } = cli.command else {
                panic!("{package}: not `serve`");
            };
            let got = match (table, etcd.len(), kubernetes, istio) {
                (Some(path), 0, false, IstioFlag::Off) => format!("file {}", path.display()),
                (None, n, false, IstioFlag::Off) if n > 0 => format!("etcd {n} endpoints"),
                (None, 0, true, mode) => format!("kubernetes {mode:?}"),
                other => format!("{other:?}"),
            };
            assert_eq!(got, want, "{package}");
        }
    }

    #[test]
    fn version_names_table_and_protocol_features() {
        assert_eq!(
            Cli::command().render_version(),
            format!(
                "isogroup-companion {} (table: v1 epoch sources rules; protocol: long-poll etag epoch delta gzip)\n",
                env!("CARGO_PKG_VERSION")
            )
        );
    }

    #[test]
    fn gateway_urls() {
        let cases = [
            ("https://gw.test.example/.isogroup/join", Ok(())),
            ("http://127.0.0.1:8000/.isogroup/join", Ok(())),
            ("gw.example/.isogroup/join", Err("must start with http:// or https://")),
            ("javascript:alert(1)", Err("must start with http:// or https://")),
            ("https:///join", Err("names no host")),
            ("https://gw.example/join?lane=x", Err("must have no query")),
            ("https://gw.example/join#x", Err("must have no query")),
            ("https://gw.example/jo in", Err("must have no query")),
        ];
        for (text, want) in cases {
            match (parse_gateway_url(text), want) {
                (Ok(got), Ok(())) => assert_eq!(got, text),
                (Err(got), Err(want)) => assert!(got.starts_with(want), "{text}: {got}"),
                (got, want) => panic!("{text}: {got:?}, want {want:?}"),
            }
        }
    }
}
