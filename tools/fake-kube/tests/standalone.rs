//! The fake API server run on its own, as a person runs it: it writes a
//! kubeconfig, serves its seed objects to kubectl and keeps running.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("isogroup-fake-kube-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// kubectl >= 1.27, or the test fails saying so.
fn kubectl() -> PathBuf {
    let bin = std::env::var_os("KUBECTL").map_or_else(|| PathBuf::from("kubectl"), PathBuf::from);
    let out = Command::new(&bin).args(["version", "--client", "-o", "json"]).output();
    let Ok(out) =
        out.map_err(|e| e.to_string()).and_then(|o| if o.status.success() { Ok(o) } else { Err(String::new()) })
    else {
        panic!("this test needs kubectl >= 1.27 on PATH (or KUBECTL=<path>); {} did not run", bin.display())
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let minor: u32 = v["clientVersion"]["minor"].as_str().unwrap_or("0").trim_end_matches('+').parse().unwrap_or(0);
    assert!(
        v["clientVersion"]["major"] == "1" && minor >= 27,
        "this test needs kubectl >= 1.27; {} is {}.{minor}",
        bin.display(),
        v["clientVersion"]["major"]
    );
    bin
}

#[test]
fn it_writes_a_kubeconfig_and_serves_its_seed_to_kubectl() {
    let kubectl = kubectl();
    let dir = temp_dir("run");
    std::fs::write(
        dir.join("seed.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: bookinfo}\n\
         spec: {host: reviews}\n",
    )
    .unwrap();
    let kubeconfig = dir.join("fake.kubeconfig");
    let _fake = Running(
        Command::new(env!("CARGO_BIN_EXE_isogroup-fake-kube"))
            .args(["--listen", "127.0.0.1:0", "--namespace", "bookinfo", "--seed"])
            .arg(dir.join("seed.yaml"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !kubeconfig.exists() {
        assert!(Instant::now() < deadline, "no kubeconfig written");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new(kubectl)
        .args(["get", "dr", "reviews", "-o", "jsonpath={.spec.host}"])
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", &dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "reviews");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_argument_exits_2_naming_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_isogroup-fake-kube")).arg("--listn").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument \"--listn\""));
    let dir = temp_dir("bad");
    let out = Command::new(env!("CARGO_BIN_EXE_isogroup-fake-kube"))
        .args(["--listen", "127.0.0.1:0", "--seed"])
        .arg(dir.join("missing.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--seed"), "names the flag");
    let _ = std::fs::remove_dir_all(&dir);
}
