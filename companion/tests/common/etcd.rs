//! A real etcd cluster on loopback (Debian's `etcd-server`, which
//! `build.sh` installs): free ports, data directories on /dev/shm (fsync on
//! a loaded disk stalls raft), a longer election timeout for 2 slow cores.
//! Members can be killed (-9) and started again on the same data; all are
//! killed and their data removed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_until};

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

pub struct Etcd {
    members: Vec<Member>,
    dir: PathBuf,
    token: String,
    /// Extra flags for every member (e.g. `--max-request-bytes`).
    extra: Vec<String>,
}

impl Etcd {
    /// Starts `n` members and waits until the cluster takes writes.
    pub async fn start(n: usize) -> Etcd {
        Etcd::start_ports((0..n).map(|_| free_port()).collect(), &[]).await
    }

    /// Starts `n` members, each with `extra` flags.
    pub async fn start_with(n: usize, extra: &[&str]) -> Etcd {
        Etcd::start_ports((0..n).map(|_| free_port()).collect(), extra).await
    }

    /// One member serving clients on `port`.
    pub async fn start_on(port: u16) -> Etcd {
        Etcd::start_ports(vec![port], &[]).await
    }

    async fn start_ports(client_ports: Vec<u16>, extra: &[&str]) -> Etcd {
        let n = client_ports.len();
        let token = format!("isogroup-{}-{}", std::process::id(), free_port());
        let shm = PathBuf::from("/dev/shm");
        let dir = if shm.is_dir() { shm } else { std::env::temp_dir() }.join(&token);
        std::fs::create_dir_all(&dir).unwrap();
        let members = client_ports
            .iter()
            .enumerate()
            .map(|(i, &client)| Member { name: format!("m{i}"), client, peer: free_port(), child: None })
            .collect();
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut etcd = Etcd { members, dir, token, extra };
        for i in 0..n {
            etcd.start_member(i);
        }
        etcd.wait_writable().await;
        etcd
    }

    /// Starts member `i` (again, on its data directory after a kill).
    pub fn start_member(&mut self, i: usize) {
        let cluster = self.initial_cluster();
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let child = Command::new("etcd")
            .args(["--name", &m.name, "--data-dir"])
            .arg(self.dir.join(&m.name))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster, "--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", "200", "--election-timeout", "3000"])
            .args(["--logger", "zap", "--log-level", "error"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("ISOGROUP_TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .expect("etcd (Debian's etcd-server; build.sh installs it)");
        self.members[i].child = Some(child);
    }

    fn initial_cluster(&self) -> String {
        self.members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer)).collect::<Vec<_>>().join(",")
    }

    /// `etcdctl snapshot save` through member `i` into `file`.
    pub fn snapshot_save(&self, i: usize, file: &std::path::Path) {
        let endpoint = format!("http://127.0.0.1:{}", self.members[i].client);
        let status = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoint, "snapshot", "save"])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("etcdctl (Debian's etcd-client; build.sh installs it)");
        assert!(status.success(), "etcdctl snapshot save");
    }

    /// Every member killed, its data replaced by `etcdctl snapshot restore`
    /// of `file` (same names, peers and token), and started again.
    pub async fn restore(&mut self, file: &std::path::Path) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
        let cluster = self.initial_cluster();
        for m in &self.members {
            let data = self.dir.join(&m.name);
            let _ = std::fs::remove_dir_all(&data);
            let status = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["snapshot", "restore"])
                .arg(file)
                .args(["--name", &m.name, "--initial-cluster", &cluster, "--initial-cluster-token", &self.token])
                .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{}", m.peer)])
                .arg("--data-dir")
                .arg(&data)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("etcdctl (Debian's etcd-client; build.sh installs it)");
            assert!(status.success(), "etcdctl snapshot restore for {}", m.name);
        }
        for i in 0..self.members.len() {
            self.start_member(i);
        }
        self.wait_writable().await;
    }

    /// `kill -9` member `i`.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `kill -STOP` member `i`: alive, but it neither answers nor applies
    /// (a member lagging behind the others).
    pub fn pause_member(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    pub fn resume_member(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = self.members[i].child.as_ref().expect("a running member").id();
        let status = Command::new("kill").arg(signal).arg(pid.to_string()).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// The index of the member that leads now.
    pub async fn leader(&self) -> usize {
        let urls = self.urls();
        let mut client = etcd_client::Client::connect([urls[0].clone()], None).await.unwrap();
        let status = client.status().await.unwrap();
        for (i, url) in urls.iter().enumerate() {
            let mut member = etcd_client::Client::connect([url.clone()], None).await.unwrap();
            let id = member.status().await.unwrap().header().unwrap().member_id();
            if id == status.leader() {
                return i;
            }
        }
        panic!("no member is the leader {}", status.leader());
    }

    /// Every member's client URL, comma separated (for `--etcd`).
    pub fn endpoints(&self) -> String {
        self.urls().join(",")
    }

    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("http://127.0.0.1:{}", m.client)).collect()
    }

    pub fn client_port(&self, i: usize) -> u16 {
        self.members[i].client
    }

    pub async fn client(&self) -> etcd_client::Client {
        let options = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(5));
        etcd_client::Client::connect(self.urls(), Some(options)).await.unwrap()
    }

    /// Waits until a write through the live members succeeds.
    pub async fn wait_writable(&self) {
        let client = self.client().await;
        wait_until("etcd to take writes", Duration::from_secs(60), async || {
            client.clone().put("/isogroup-test-probe", "1", None).await.is_ok()
        })
        .await;
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
