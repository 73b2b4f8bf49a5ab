//! The demo service: one binary that plays service X in group G. It answers
//! with who it is and, when it has a next service, calls it through Envoy,
//! passing the group headers on, and nests the answer. `show` drives a
//! running demo and prints what each request went through.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

mod show;

/// Headers a well-behaved app forwards to the next hop.
const FORWARDED: [&str; 7] =
    ["x-isogroup", "x-isogroup-strict", "baggage", "traceparent", "x-request-id", "x-isogroup-debug", "content-type"];
/// What a sloppy app still forwards.
const TRACE_HEADERS: [&str; 2] = ["traceparent", "x-request-id"];
/// Response annotations copied from the next hop, so the client sees the chain.
const ANNOTATIONS: [&str; 3] = ["x-isogroup-served", "x-isogroup-decision", "x-isogroup-failfast"];

#[derive(Parser)]
#[command(name = "isogroup-demo", about = "isogroup demo service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve as one service instance.
    Serve {
        #[arg(long)]
        service: String,
        #[arg(long)]
        group: String,
        #[arg(long)]
        listen: SocketAddr,
        /// The service to call next (its host name as Envoy routes it).
        #[arg(long)]
        next: Option<String>,
        /// Envoy's listener that reaches the next service.
        #[arg(long, default_value = "127.0.0.1:10000")]
        via: String,
        /// Forward only the tracing headers (`traceparent`, `x-request-id`),
        /// dropping `x-isogroup` and `baggage`: the sloppy app that the
        /// propagation assist exists for.
        #[arg(long, conflicts_with = "forward_nothing")]
        forward_only_trace_headers: bool,
        /// Forward no header at all, not even `traceparent`: the app the
        /// assist cannot help (its calls are counted `untraced`).
        #[arg(long)]
        forward_nothing: bool,
    },
    /// Send the demo requests through Envoy and print a table.
    Show {
        #[arg(long, default_value = "127.0.0.1:10000")]
        via: String,
    },
    /// Send requests in one group to service a, each with its own trace id
    /// (`traceparent`), and print the paths they took.
    Send {
        #[arg(long, default_value = "127.0.0.1:10000")]
        via: String,
        /// The group (`x-isogroup`).
        #[arg(long)]
        group: String,
        #[arg(long, default_value_t = 64)]
        count: u32,
    },
}

struct App {
    service: String,
    group: String,
    next: Option<String>,
    via: String,
    forward: Forward,
    client: reqwest::Client,
}

/// Which of the received headers the app passes on to the next hop.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Forward {
    All,
    TraceOnly,
    Nothing,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Command::Serve { service, group, listen, next, via, forward_only_trace_headers, forward_nothing } => {
            let forward = match (forward_only_trace_headers, forward_nothing) {
                (_, true) => Forward::Nothing,
                (true, false) => Forward::TraceOnly,
                (false, false) => Forward::All,
            };
            let app = Arc::new(App { service, group, next, via, forward, client: reqwest::Client::new() });
            let router = axum::Router::new().fallback(handle).with_state(app);
            let listener = tokio::net::TcpListener::bind(listen).await?;
            axum::serve(listener, router).with_graceful_shutdown(shutdown()).await?;
        }
        Command::Show { via } => show::run(&via).await?,
        Command::Send { via, group, count } => show::send(&via, &group, count).await?,
    }
    Ok(())
}

async fn shutdown() {
    let _ = tokio::signal::ctrl_c().await;
}

async fn handle(State(app): State<Arc<App>>, headers: HeaderMap) -> impl IntoResponse {
    let received: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let mut body = json!({ "service": app.service, "group": app.group, "headers": received });
    let mut out = HeaderMap::new();
    let mut status = StatusCode::OK;
    if let Some(next) = &app.next {
        let mut req = app.client.get(format!("http://{}/", app.via)).header("host", next.as_str());
        for name in FORWARDED {
            let forwarded = match app.forward {
                Forward::All => true,
                Forward::TraceOnly => TRACE_HEADERS.contains(&name),
                Forward::Nothing => false,
            };
            if !forwarded {
                continue;
            }
            for v in headers.get_all(name) {
                req = req.header(name, v);
            }
        }
        match req.send().await {
            Ok(resp) => {
                status = resp.status();
                for name in ANNOTATIONS {
                    for v in resp.headers().get_all(name) {
                        out.append(name, v.clone());
                    }
                }
                let text = resp.text().await.unwrap_or_default();
                body["next"] =
                    serde_json::from_str::<Value>(&text).unwrap_or(json!({ "status": status.as_u16(), "body": text }));
            }
            Err(e) => {
                status = StatusCode::BAD_GATEWAY;
                body["next"] = json!({ "error": e.to_string() });
            }
        }
    }
    out.insert(
        "x-demo-instance",
        HeaderValue::from_str(&format!("{}@{}", app.service, app.group)).unwrap_or(HeaderValue::from_static("?")),
    );
    (status, out, Json(body))
}
