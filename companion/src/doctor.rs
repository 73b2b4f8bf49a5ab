//! `isogroup-companion doctor`: fetches `GET /v1/propagation` from a
//! running companion, prints the ranking, and answers with an exit code a
//! CI job can act on: 0 when every workload's drop share is at most the
//! allowed one, 1 when some workload's is above it (named), 2 when the
//! companion cannot be asked or its answer is not one.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use serde_json::Value;

/// The whole exchange, connection to last byte.
const TIMEOUT: Duration = Duration::from_secs(15);
/// The largest answer read (2,000 workloads x 200 destinations fit).
const MAX_ANSWER: usize = 256 << 20;

/// One edge or workload row as the answer gives it.
struct Row {
    workload: String,
    namespace: String,
    destination: Option<String>,
    counts: [u64; 5],
    drop_share: f64,
    advice: Option<String>,
}

pub fn run(url: &str, max_drop_share: f64, token_file: Option<&std::path::Path>) -> ExitCode {
    let token = match token_file.map(std::fs::read_to_string).transpose() {
        Ok(t) => t.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()),
        Err(e) => return fail(&format!("--token-file: {e}")),
    };
    let target = match propagation_uri(url) {
        Ok(uri) => uri,
        Err(e) => return fail(&format!("--url: {e}")),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let body = match runtime.block_on(fetch(&target, token.as_deref())) {
        Ok(body) => body,
        Err(e) => return fail(&format!("{target}: {e}")),
    };
    let (edges, workloads) = match parse(&body) {
        Ok(rows) => rows,
        Err(e) => return fail(&format!("{target}: not a propagation answer: {e}")),
    };
    print!("{}", table(&edges));
    let above: Vec<&Row> = workloads.iter().filter(|w| w.drop_share > max_drop_share).collect();
    if above.is_empty() {
        println!(
            "ok: every workload's drop share is at most {max_drop_share} ({} workloads, {} edges; advisory)",
            workloads.len(),
            edges.len()
        );
        return ExitCode::SUCCESS;
    }
    for w in &above {
        println!(
            "drops the group: workload {} (namespace {}) drop share {:.4} > {max_drop_share}",
            w.workload, w.namespace, w.drop_share
        );
    }
    ExitCode::from(1)
}

fn fail(message: &str) -> ExitCode {
    eprintln!("doctor: {message}");
    ExitCode::from(2)
}

/// `<url>/v1/propagation`; only `http://` (the companion serves plain HTTP).
fn propagation_uri(url: &str) -> Result<hyper::Uri, String> {
    if !url.starts_with("http://") {
        return Err(format!("{url:?}: must start with http:// (the companion's address, e.g. http://127.0.0.1:8080)"));
    }
    let full = format!("{}/v1/propagation", url.trim_end_matches('/'));
    let uri: hyper::Uri = full.parse().map_err(|e| format!("{url:?}: {e}"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?}: names no host"));
    }
    Ok(uri)
}

async fn fetch(uri: &hyper::Uri, token: Option<&str>) -> Result<Vec<u8>, String> {
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut request = hyper::Request::get(uri.clone()).header("accept", "application/json");
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let request = request.body(Empty::new()).map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| format!("unreachable: {e}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            return Err(format!("answered {status}: {text}"));
        }
        Ok(body.to_vec())
    };
    tokio::time::timeout(TIMEOUT, exchange).await.map_err(|_| format!("no answer within {TIMEOUT:?}"))?
}

/// The answer's edges and workloads, each field checked.
fn parse(body: &[u8]) -> Result<(Vec<Row>, Vec<Row>), String> {
    let answer: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let list =
        |key: &str| answer.get(key).and_then(Value::as_array).ok_or_else(|| format!("{key}: missing or not a list"));
    let edges = list("edges")?.iter().enumerate().map(|(i, e)| row(e, &format!("edges[{i}]"), true));
    let edges = edges.collect::<Result<Vec<_>, _>>()?;
    let workloads = list("workloads")?.iter().enumerate().map(|(i, w)| row(w, &format!("workloads[{i}]"), false));
    Ok((edges, workloads.collect::<Result<Vec<_>, _>>()?))
}

fn row(v: &Value, at: &str, edge: bool) -> Result<Row, String> {
    let text =
        |key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned).ok_or(format!("{at}.{key}: not a string"));
    let count = |key: &str| v.get(key).and_then(Value::as_u64).ok_or(format!("{at}.{key}: not a count"));
    let drop_share = v
        .get("drop_share")
        .and_then(Value::as_f64)
        .filter(|s| (0.0..=1.0).contains(s))
        .ok_or(format!("{at}.drop_share: not a share (0 to 1)"))?;
    Ok(Row {
        workload: text("workload")?,
        namespace: text("namespace")?,
        destination: if edge { Some(text("destination")?) } else { None },
        counts: [count("kept")?, count("changed")?, count("healed")?, count("dropped")?, count("untraced")?],
        drop_share,
        advice: if edge { Some(text("advice")?) } else { None },
    })
}

/// The edges as a fixed-width table, worst first as answered.
fn table(edges: &[Row]) -> String {
    let head =
        ["WORKLOAD", "NAMESPACE", "DESTINATION", "KEPT", "CHANGED", "HEALED", "DROPPED", "UNTRACED", "DROP SHARE"];
    let rows: Vec<[String; 9]> = edges
        .iter()
        .map(|e| {
            let [k, c, h, d, u] = e.counts.map(|n| n.to_string());
            [
                e.workload.clone(),
                e.namespace.clone(),
                e.destination.clone().unwrap_or_default(),
                k,
                c,
                h,
                d,
                u,
                format!("{:.4}", e.drop_share),
            ]
        })
        .collect();
    let mut widths = head.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[&str], advice: &str| {
        for (cell, w) in cells.iter().zip(widths) {
            let _ = write!(out, "{cell:<w$}  ");
        }
        let _ = writeln!(out, "{advice}");
    };
    line(&mut out, &head, "ADVICE");
    for (r, e) in rows.iter().zip(edges) {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&mut out, &cells, e.advice.as_deref().unwrap_or_default());
    }
    if edges.is_empty() {
        out.push_str("(no reports in the last 15 minutes)\n");
    }
    out
}

/// `--max-drop-share`: a share, 0 to 1.
pub fn parse_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{text:?} is not a share from 0 to 1")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn urls_and_shares() {
        assert_eq!(
            propagation_uri("http://127.0.0.1:8080/").unwrap().to_string(),
            "http://127.0.0.1:8080/v1/propagation"
        );
        assert!(propagation_uri("https://c.example").unwrap_err().contains("http://"));
        assert!(propagation_uri("127.0.0.1:8080").is_err());
        assert!(propagation_uri("http://").is_err());
        assert_eq!(parse_share("0.25"), Ok(0.25));
        assert!(parse_share("1.5").is_err() && parse_share("-0.1").is_err() && parse_share("x").is_err());
        assert!(parse_share("NaN").is_err());
    }

    #[test]
    fn an_answer_missing_a_field_is_named() {
        let e = parse(br#"{"edges": [{"workload": "b"}], "workloads": []}"#).err().unwrap();
        assert_eq!(e, "edges[0].drop_share: not a share (0 to 1)");
        let e = parse(br#"{"edges": [{"workload": "b", "drop_share": 0.5}], "workloads": []}"#).err().unwrap();
        assert_eq!(e, "edges[0].namespace: not a string");
        let e = parse(br#"{"edges": []}"#).err().unwrap();
        assert_eq!(e, "workloads: missing or not a list");
        assert!(parse(b"<html>").err().unwrap().starts_with("not JSON"));
    }
}
