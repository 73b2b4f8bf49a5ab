//! The companion's fake Kubernetes API server, on its own: it serves every
//! kind the companion reads and writes (Istio's CRDs as Istio ships them),
//! writes a kubeconfig for it and runs until interrupted, so a person can
//! point `kubectl` and a real companion at it.
//!
//! ```text
//! isogroup-fake-kube --listen 127.0.0.1:6443 --kubeconfig fake.kubeconfig [--seed objects.yaml]...
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // the fake is test code

#[allow(dead_code)]
#[path = "../../../companion/src/kube/fake.rs"]
mod fake;

use std::process::ExitCode;

const USAGE: &str = "usage: isogroup-fake-kube [--listen ADDR] [--kubeconfig PATH] [--namespace NS] [--seed FILE]...
  --listen ADDR      where to serve (default 127.0.0.1:6443; port 0 picks a free one)
  --kubeconfig PATH  the kubeconfig to write for it (default ./fake.kubeconfig)
  --namespace NS     the kubeconfig's namespace (default default)
  --seed FILE        multi-document YAML of objects to create first (repeatable)";

struct Args {
    listen: String,
    kubeconfig: String,
    namespace: String,
    seeds: Vec<String>,
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        listen: "127.0.0.1:6443".into(),
        kubeconfig: "fake.kubeconfig".into(),
        namespace: "default".into(),
        seeds: vec![],
    };
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => args.listen = value()?,
            "--kubeconfig" => args.kubeconfig = value()?,
            "--namespace" => args.namespace = value()?,
            "--seed" => args.seeds.push(value()?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

/// The resource an object of a seed file goes to, from its apiVersion and kind.
fn resource_of(obj: &serde_json::Value) -> Option<fake::Res> {
    let api_version = obj["apiVersion"].as_str()?;
    let kind = obj["kind"].as_str()?;
    fake::kinds::every().into_iter().find(|r| {
        let (group, rest) = r.split_once('/').unwrap_or_default();
        let version = rest.split('/').next().unwrap_or_default();
        let gv = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
        gv == api_version && fake::kind_name(r) == kind
    })
}

/// The objects of a multi-document YAML file.
fn read_seed(path: &str) -> Result<Vec<serde_json::Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    text.split("\n---\n")
        .filter(|doc| !doc.trim().is_empty())
        .enumerate()
        .map(|(i, doc)| serde_yaml::from_str(doc).map_err(|e| format!("document {}: {e}", i + 1)))
        .collect()
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(why) => {
            if !why.is_empty() {
                eprintln!("isogroup-fake-kube: {why}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let api = fake::FakeApi::start_with(&fake::kinds::every(), &args.listen, 4096).await;
    for seed in &args.seeds {
        let objects = match read_seed(seed) {
            Ok(o) => o,
            Err(why) => {
                eprintln!("isogroup-fake-kube: --seed {seed}: {why}");
                return ExitCode::from(2);
            }
        };
        for obj in objects {
            match resource_of(&obj) {
                Some(r) => {
                    api.put(&r, obj);
                }
                None => {
                    eprintln!("isogroup-fake-kube: {seed}: no resource serves {} {}", obj["apiVersion"], obj["kind"]);
                    return ExitCode::from(2);
                }
            }
        }
    }
    if let Err(e) = std::fs::write(&args.kubeconfig, api.kubeconfig(&args.namespace)) {
        eprintln!("isogroup-fake-kube: --kubeconfig {}: {e}", args.kubeconfig);
        return ExitCode::from(2);
    }
    println!("serving {} (kubeconfig: {}); Ctrl-C stops", api.url, args.kubeconfig);
    let _ = tokio::signal::ctrl_c().await;
    ExitCode::SUCCESS
}
