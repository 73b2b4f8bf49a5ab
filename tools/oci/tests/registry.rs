//! Push to a real registry on loopback (Debian's `docker-registry`), pull
//! back with an independent client crate (oci-client), and check what Istio
//! will see: media types, the one `plugin.wasm` member, and that the digest
//! we print is the registry's `Docker-Content-Digest`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

struct Registry {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn registry_bin() -> PathBuf {
    let path =
        std::env::var_os("ISOGROUP_REGISTRY").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/docker-registry".into());
    assert!(path.exists(), "{} not found: ./build.sh test installs Debian's docker-registry", path.display());
    path
}

async fn start_registry() -> Registry {
    let port = isogroup_test_support::free_port();
    let dir = std::env::temp_dir().join(format!("isogroup-registry-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n", dir.join("data").display()),
    )
    .unwrap();
    let child = Command::new(registry_bin())
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "registry did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Registry { child, dir, port }
}

#[tokio::test]
async fn push_then_pull_with_another_client() {
    let registry = start_registry().await;
    let wasm: Vec<u8> = b"\0asm\x01\0\0\0".iter().copied().chain((0..5000u32).map(|i| (i % 251) as u8)).collect();
    let wasm_path = registry.dir.join("plugin-under-test.wasm");
    std::fs::write(&wasm_path, &wasm).unwrap();
    let reference = format!("127.0.0.1:{}/isogroup/filter:0.1.0", registry.port);
    let out = Command::new(env!("CARGO_BIN_EXE_isogroup-oci"))
        .args(["push", "--to", &reference, "--wasm"])
        .arg(&wasm_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let printed = stdout.lines().find_map(|l| l.strip_prefix("manifest digest: ")).unwrap().to_owned();

    let client = Client::new(ClientConfig { protocol: ClientProtocol::Http, ..ClientConfig::default() });
    let r: Reference = reference.parse().unwrap();
    let (manifest, digest) = client.pull_image_manifest(&r, &RegistryAuth::Anonymous).await.unwrap();
    assert_eq!(digest, printed, "the digest we print is the registry's");
    assert_eq!(manifest.media_type.as_deref(), Some("application/vnd.oci.image.manifest.v1+json"));
    assert_eq!(manifest.config.media_type, "application/vnd.oci.image.config.v1+json");
    assert_eq!(manifest.layers.len(), 1);
    assert_eq!(manifest.layers[0].media_type, "application/vnd.oci.image.layer.v1.tar+gzip");
    assert_eq!(
        manifest.annotations.as_ref().and_then(|a| a.get("module.wasm.image/variant")).map(String::as_str),
        Some("compat")
    );
    let mut layer = Vec::new();
    client.pull_blob(&r, &manifest.layers[0], &mut layer).await.unwrap();
    // gunzip and read the tar: exactly one member, plugin.wasm, our bytes
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&layer[..]).read_to_end(&mut tar).unwrap();
    assert_eq!(std::str::from_utf8(&tar[..11]).unwrap(), "plugin.wasm");
    assert_eq!(tar[11], 0);
    let size = usize::from_str_radix(std::str::from_utf8(&tar[124..135]).unwrap(), 8).unwrap();
    assert_eq!(&tar[512..512 + size], &wasm[..]);
    let next = 512 + size.div_ceil(512) * 512;
    assert!(tar[next..].iter().all(|&b| b == 0), "no second member");
    // the same wasm pushed again: the same digest (deterministic build)
    let again = Command::new(env!("CARGO_BIN_EXE_isogroup-oci"))
        .args(["push", "--to", &reference, "--wasm"])
        .arg(&wasm_path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains(&printed));
}
