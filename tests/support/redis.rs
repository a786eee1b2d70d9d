//! Real `redis-server` processes for tests: free loopback ports, no persistence, killed on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "redis-server was not found on PATH. The tests need a real Redis: run \
     `scripts/test` (it installs it), or install it yourself: Debian/Ubuntu `apt-get install -y redis-server`, \
     Fedora `dnf install redis`, macOS `brew install redis`.";

/// Panics with the install hint when the Redis binaries are missing: a test never skips silently.
pub fn require_binary(name: &str) -> PathBuf {
    require_tool(name, INSTALL_HINT)
}

/// The program `name` on `PATH`; panics with `hint` (how to install it) when it is missing.
pub fn require_tool(name: &str, hint: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| panic!("{name}: {hint}"))
}

/// A free TCP port on 127.0.0.1 (bound and released; the tiny race is accepted in tests).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// A temporary directory for one server, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("trc-redis-{}-{}-{tag}", std::process::id(), n));
        std::fs::create_dir_all(&path).expect("create a scratch dir");
        ScratchDir(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `redis-server` process on a loopback port.
pub struct RedisServer {
    port: u16,
    /// A Sentinel: its configuration file (it rewrites it), run with `--sentinel`.
    sentinel_conf: Option<PathBuf>,
    extra_args: Vec<String>,
    password: Option<String>,
    dir: ScratchDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (e.g. `["--maxmemory", "1mb"]`).
    pub fn start_with(extra_args: &[&str]) -> Self {
        let mut server = Self::unstarted(extra_args);
        server.spawn_on_free_port();
        server
    }

    /// [`start_with`](Self::start_with), the server listening on a Unix socket in its scratch directory too
    /// ([`socket_url`](Self::socket_url)).
    pub fn start_with_socket(extra_args: &[&str]) -> Self {
        let mut server = Self::unstarted(extra_args);
        let socket = server.socket_path().display().to_string();
        server.extra_args.extend(["--unixsocket".into(), socket]);
        server
            .extra_args
            .extend(["--unixsocketperm".into(), "700".into()]);
        server.spawn_on_free_port();
        server
    }

    /// A server not yet started, with its port, scratch directory and arguments chosen.
    fn unstarted(extra_args: &[&str]) -> Self {
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let password = extra_args
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| extra_args.get(i + 1).cloned());
        RedisServer {
            port: free_port(),
            sentinel_conf: None,
            extra_args,
            password,
            dir: ScratchDir::new("single"),
            child: None,
        }
    }

    /// Starts a primary and a replica of it, and waits until the replica has synced (both with no delay before
    /// a sync, so that a replica promoted later can sync its old primary quickly).
    pub async fn start_pair() -> (Self, Self) {
        Self::start_pair_with(&[]).await
    }

    /// [`start_pair`](Self::start_pair), the primary started with `primary_args` too.
    pub async fn start_pair_with(primary_args: &[&str]) -> (Self, Self) {
        let mut args = vec!["--repl-diskless-sync-delay", "0"];
        args.extend_from_slice(primary_args);
        let primary = Self::start_with(&args);
        let replica_of = primary.port().to_string();
        let replica = Self::start_with(&[
            "--replicaof",
            "127.0.0.1",
            &replica_of,
            "--repl-diskless-sync-delay",
            "0",
        ]);
        super::calls::wait_until("the replica synced", || {
            String::from_utf8_lossy(&replica.command(&[b"INFO", b"replication"]))
                .contains("master_link_status:up")
        })
        .await;
        (primary, replica)
    }

    /// Starts a server on `port` exactly, or says why it could not (the port is taken, by another server
    /// included).
    pub fn try_start_on(port: u16) -> Result<Self, String> {
        let mut server = RedisServer {
            port,
            sentinel_conf: None,
            extra_args: Vec::new(),
            password: None,
            dir: ScratchDir::new("single"),
            child: None,
        };
        match server.try_spawn() {
            Ok(()) => Ok(server),
            Err(e) => {
                server.kill();
                Err(e)
            }
        }
    }

    /// Starts a Sentinel on a free port monitoring the primary on `primary_port` as `name`, with a quorum of
    /// one, a primary taken for down after 500 ms without a reply, and failovers allowed every 2 s.
    pub fn start_sentinel(name: &str, primary_port: u16) -> Self {
        Self::start_sentinel_with(name, primary_port, "")
    }

    /// [`start_sentinel`](Self::start_sentinel) with more lines for its configuration file (a TLS port, say).
    pub fn start_sentinel_with(name: &str, primary_port: u16, extra_conf: &str) -> Self {
        let dir = ScratchDir::new("sentinel");
        let port = free_port();
        let conf = dir.0.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {name} 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds {name} 500\n\
                 sentinel failover-timeout {name} 2000\n{extra_conf}",
                dir = dir.0.display()
            ),
        )
        .expect("write sentinel.conf");
        let mut server = RedisServer {
            port,
            sentinel_conf: Some(conf),
            extra_args: Vec::new(),
            password: None,
            dir,
            child: None,
        };
        server.spawn();
        server
    }

    /// Spawns the server on its port and waits until it answers there.
    fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{e}");
        }
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        let binary = require_binary("redis-server");
        let mut command = Command::new(binary);
        if let Some(conf) = &self.sentinel_conf {
            command
                .arg(conf)
                .arg("--sentinel")
                .args(["--loglevel", "warning"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            self.child = Some(command.spawn().expect("spawn redis-server --sentinel"));
            return self.wait_until_answering();
        }
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&self.dir.0)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = command.spawn().expect("spawn redis-server");
        self.child = Some(child);
        self.wait_until_answering()
    }

    /// Spawns the server on a free port. Another process can take a port between [`free_port`] choosing it
    /// and the server binding it: the server then exits, and it is started again on another port.
    fn spawn_on_free_port(&mut self) {
        let mut error = String::new();
        for _ in 0..5 {
            match self.try_spawn() {
                Ok(()) => return,
                Err(e) => {
                    error = e;
                    self.kill();
                    self.port = free_port();
                }
            }
        }
        panic!("redis-server could not start on a free port in 5 attempts: {error}");
    }

    /// Waits until this server's own process answers on its port: it has not exited, and `INFO server` there
    /// names its process id (so a test never talks to another test's server that holds the port).
    fn wait_until_answering(&mut self) -> Result<(), String> {
        let port = self.port;
        let Some(child) = self.child.as_mut() else {
            return Err(format!("redis-server on port {port} was not started"));
        };
        let ours = format!("process_id:{}\r\n", child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "redis-server on port {port} exited ({status}) before answering: was the port taken?"
                ));
            }
            let info = try_raw_command(port, self.password.as_deref(), &[b"INFO", b"server"]);
            if info.is_ok_and(|reply| String::from_utf8_lossy(&reply).contains(&ours)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server on port {port} did not answer as itself within 10 s"
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port the server listens on (kept across [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>` (with the password when the server requires one).
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The Unix socket a server from [`start_with_socket`](Self::start_with_socket) listens on.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.0.join("redis.sock")
    }

    /// `redis+unix:///<scratch dir>/redis.sock` (with the password when the server requires one: fred wants a host
    /// before a path then, any host).
    pub fn socket_url(&self) -> String {
        let path = self.socket_path();
        match &self.password {
            Some(password) => format!("redis+unix://:{password}@localhost{}", path.display()),
            None => format!("redis+unix://{}", path.display()),
        }
    }

    /// Kills the process (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts the server again on the same port with `extra_args` in place of the ones it had, keeping its
    /// directory: it loads the `dump.rdb` a `SAVE` left there.
    pub fn restart_with(&mut self, extra_args: &[&str]) {
        self.kill();
        self.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
        self.spawn();
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends one command over a raw RESP connection and returns the raw reply (for test set-up and inspection
    /// that must not go through the code under test).
    pub fn command(&self, args: &[&[u8]]) -> Vec<u8> {
        raw_command(self.port, self.password.as_deref(), args)
    }

    /// [`command`](Self::command), with a failed connection returned rather than a panic (for polls across
    /// a failover, whose promotion closes every normal client's connection).
    pub fn try_command(&self, args: &[&[u8]]) -> std::io::Result<Vec<u8>> {
        try_raw_command(self.port, self.password.as_deref(), args)
    }

    /// How many of the server's clients are subscribed to a channel (`CLIENT LIST`'s `sub`): unlike a count of
    /// all clients, it does not race with connections the harness and the server itself are still closing.
    pub fn subscribed_clients(&self) -> usize {
        String::from_utf8_lossy(&self.command(&[b"CLIENT", b"LIST"]))
            .lines()
            .filter(|client| !client.contains(" sub=0 ") && client.contains(" sub="))
            .count()
    }

    /// Stops the process (SIGSTOP): its port still accepts connections, and nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Continues a paused process (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().expect("a running server").to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// The OS process id, for signals (SIGSTOP/SIGCONT).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A 3-master Redis Cluster on loopback, created with `redis-cli --cluster create`.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them into one cluster covering all 16384 slots.
    pub fn start() -> Self {
        Self::start_with(0, 2000, &[])
    }

    /// Starts three primaries with `replicas` replicas each, a `cluster-node-timeout` of `node_timeout_ms`, and
    /// extra `redis-server` arguments on every node.
    pub fn start_with(replicas: usize, node_timeout_ms: u64, extra_args: &[&str]) -> Self {
        let cli = require_binary("redis-cli");
        let mut nodes = Vec::new();
        for _ in 0..3 * (1 + replicas) {
            let dir = ScratchDir::new("cluster");
            let config = dir.0.join("nodes.conf");
            let mut args = vec![
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                config.display().to_string(),
                "--cluster-node-timeout".into(),
                node_timeout_ms.to_string(),
            ];
            if replicas > 0 {
                // A replica must have synced to take over; by default the first sync waits 5 s.
                args.extend(["--repl-diskless-sync-delay".into(), "0".into()]);
            }
            args.extend(extra_args.iter().map(|a| a.to_string()));
            let mut server = RedisServer {
                port: free_port(),
                sentinel_conf: None,
                extra_args: args,
                password: None,
                dir,
                child: None,
            };
            server.spawn_on_free_port();
            nodes.push(server);
        }
        let mut command = Command::new(cli);
        command.args(["--cluster", "create"]);
        for node in &nodes {
            command.arg(format!("127.0.0.1:{}", node.port));
        }
        command.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        let output = command.output().expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_until_ok();
        cluster.wait_until_replicas_synced();
        cluster
    }

    /// Starts one more cluster-enabled server (node timeout 2 s) and joins it to the cluster as a primary that
    /// serves no slot yet (`redis-cli --cluster add-node`), once every node knows it; returns its index.
    pub fn add_primary(&mut self) -> usize {
        let dir = ScratchDir::new("cluster");
        let config = dir.0.join("nodes.conf");
        let mut node = RedisServer {
            port: free_port(),
            sentinel_conf: None,
            extra_args: vec![
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                config.display().to_string(),
                "--cluster-node-timeout".into(),
                "2000".into(),
            ],
            password: None,
            dir,
            child: None,
        };
        node.spawn_on_free_port();
        let output = Command::new(require_binary("redis-cli"))
            .args(["--cluster", "add-node"])
            .arg(format!("127.0.0.1:{}", node.port))
            .arg(format!("127.0.0.1:{}", self.nodes[0].port))
            .output()
            .expect("run redis-cli --cluster add-node");
        assert!(
            output.status.success(),
            "redis-cli --cluster add-node failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let id = node_id(node.port);
        self.nodes.push(node);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self
            .nodes
            .iter()
            .all(|n| String::from_utf8_lossy(&n.command(&[b"CLUSTER", b"NODES"])).contains(&id))
        {
            assert!(
                Instant::now() < deadline,
                "the cluster never learned of the new node"
            );
            thread::sleep(Duration::from_millis(50));
        }
        self.wait_until_ok();
        self.nodes.len() - 1
    }

    /// Moves hash slot `slot`, keys and all, from primary `from` to primary `to`, the way `redis-cli --cluster
    /// reshard` moves each slot: importing and migrating states, `MIGRATE` of its keys, then the new owner told
    /// to every primary.
    pub fn move_slot(&self, slot: u16, from: usize, to: usize) {
        let (source, target) = (&self.nodes[from], &self.nodes[to]);
        let (source_id, target_id) = (node_id(source.port), node_id(target.port));
        let slot = slot.to_string();
        let ok = |reply: Vec<u8>| {
            assert!(
                reply.starts_with(b"+OK"),
                "{}",
                String::from_utf8_lossy(&reply)
            )
        };
        let told = |reply: Vec<u8>| {
            assert!(
                reply.starts_with(b"+OK")
                    || reply.starts_with(b"-ERR Please use SETSLOT only with masters"),
                "{}",
                String::from_utf8_lossy(&reply)
            )
        };
        ok(target.command(&[
            b"CLUSTER",
            b"SETSLOT",
            slot.as_bytes(),
            b"IMPORTING",
            source_id.as_bytes(),
        ]));
        ok(source.command(&[
            b"CLUSTER",
            b"SETSLOT",
            slot.as_bytes(),
            b"MIGRATING",
            target_id.as_bytes(),
        ]));
        loop {
            let keys = bulk_array(&source.command(&[
                b"CLUSTER",
                b"GETKEYSINSLOT",
                slot.as_bytes(),
                b"100",
            ]));
            if keys.is_empty() {
                break;
            }
            let port = target.port.to_string();
            let mut migrate: Vec<&[u8]> = vec![
                b"MIGRATE",
                b"127.0.0.1",
                port.as_bytes(),
                b"",
                b"0",
                b"5000",
                b"KEYS",
            ];
            migrate.extend(keys.iter().map(Vec::as_slice));
            ok(source.command(&migrate));
        }
        ok(target.command(&[
            b"CLUSTER",
            b"SETSLOT",
            slot.as_bytes(),
            b"NODE",
            target_id.as_bytes(),
        ]));
        // The others learn it by gossip too; telling them is quicker. A primary left with no slot may have
        // become a replica (replica migration) by now, which takes no SETSLOT.
        for node in self
            .nodes
            .iter()
            .filter(|n| n.port != target.port && n.child.is_some())
        {
            told(node.command(&[
                b"CLUSTER",
                b"SETSLOT",
                slot.as_bytes(),
                b"NODE",
                target_id.as_bytes(),
            ]));
        }
    }

    /// Waits until every replica's link to its primary is up (it holds the primary's data and may take over).
    fn wait_until_replicas_synced(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let synced = self.nodes.iter().all(|node| {
                let info = node.command(&[b"INFO", b"replication"]);
                let info = String::from_utf8_lossy(&info);
                info.contains("role:master") || info.contains("master_link_status:up")
            });
            if synced {
                return;
            }
            assert!(Instant::now() < deadline, "the replicas never synced");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The slot ranges node `i` serves as a primary (empty for a replica), from its `CLUSTER NODES`.
    pub fn slots_of(&self, i: usize) -> Vec<(u16, u16)> {
        slots_served(self.nodes[i].port)
    }

    /// The index of the primary that serves hash slot `slot`, by its own `CLUSTER NODES`.
    pub fn primary_of(&self, slot: u16) -> usize {
        (0..self.nodes.len())
            .find(|&i| {
                self.slots_of(i)
                    .iter()
                    .any(|&(start, end)| (start..=end).contains(&slot))
            })
            .expect("a primary serves the slot")
    }

    /// Whether node `i` is a primary now.
    pub fn is_primary(&self, i: usize) -> bool {
        let reply = self.nodes[i].command(&[b"ROLE"]);
        String::from_utf8_lossy(&reply).contains("master")
    }

    /// The node, by index.
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// Waits until every running node reports `cluster_state:ok`.
    pub fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let all_ok = self.nodes.iter().all(|node| {
                node.child.is_none()
                    || try_raw_command(node.port, None, &[b"CLUSTER", b"INFO"]).is_ok_and(|info| {
                        String::from_utf8_lossy(&info).contains("cluster_state:ok")
                    })
            });
            if all_ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster never reached cluster_state:ok"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The nodes, in creation order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// `redis-cluster://127.0.0.1:<p1>?node=127.0.0.1:<p2>&node=...`, the form fred parses.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port);
        for (i, node) in self.nodes.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", node.port));
        }
        url
    }
}

fn raw_command(port: u16, password: Option<&str>, args: &[&[u8]]) -> Vec<u8> {
    try_raw_command(port, password, args).unwrap_or_else(|e| panic!("redis command on {port}: {e}"))
}

fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn try_raw_command(port: u16, password: Option<&str>, args: &[&[u8]]) -> std::io::Result<Vec<u8>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    if let Some(password) = password {
        stream.write_all(&encode(&[b"AUTH", password.as_bytes()]))?;
        read_reply(&mut stream)?;
    }
    stream.write_all(&encode(args))?;
    read_reply(&mut stream)
}

/// Reads one complete RESP2 reply (enough for the commands the tests send).
fn read_reply(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut pending = 1usize;
    while pending > 0 {
        let line = read_line(stream)?;
        pending -= 1;
        match line.first() {
            Some(b'$') => {
                let len: i64 = parse_len(&line);
                out.extend_from_slice(&line);
                if len >= 0 {
                    let mut data = vec![0u8; len as usize + 2];
                    stream.read_exact(&mut data)?;
                    out.extend_from_slice(&data);
                }
            }
            Some(b'*') => {
                let len: i64 = parse_len(&line);
                out.extend_from_slice(&line);
                if len > 0 {
                    pending += len as usize;
                }
            }
            _ => out.extend_from_slice(&line),
        }
    }
    Ok(out)
}

fn parse_len(line: &[u8]) -> i64 {
    String::from_utf8_lossy(&line[1..])
        .trim()
        .parse()
        .expect("a RESP length")
}

fn read_line(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        stream.read_exact(&mut byte)?;
        line.push(byte[0]);
        if line.ends_with(b"\r\n") {
            return Ok(line);
        }
    }
}

/// The slot ranges the server on `port` serves as a primary (empty for a replica or a dead server).
pub fn slots_served(port: u16) -> Vec<(u16, u16)> {
    let Ok(reply) = try_raw_command(port, None, &[b"CLUSTER", b"NODES"]) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&reply);
    let Some(line) = text.lines().find(|l| l.contains("myself")) else {
        return Vec::new();
    };
    if !line.contains("master") {
        return Vec::new();
    }
    line.split_whitespace()
        .skip(8)
        .filter_map(|range| {
            let (start, end) = range.split_once('-').unwrap_or((range, range));
            Some((start.parse().ok()?, end.parse().ok()?))
        })
        .collect()
}

/// The cluster node id of the server on `port`.
pub fn node_id(port: u16) -> String {
    let reply = raw_command(port, None, &[b"CLUSTER", b"MYID"]);
    bulk_payload(&reply)
        .map(|id| String::from_utf8_lossy(&id).into_owned())
        .expect("a node id")
}

/// The bulk strings of a raw array reply (`*<n>` then `$<len>` and the bytes, each), in order.
pub fn bulk_array(reply: &[u8]) -> Vec<Vec<u8>> {
    let mut items = Vec::new();
    let mut rest = match reply.windows(2).position(|w| w == b"\r\n") {
        Some(end) if reply.starts_with(b"*") => &reply[end + 2..],
        _ => return items,
    };
    while rest.starts_with(b"$") {
        let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
            break;
        };
        let Ok(len) = String::from_utf8_lossy(&rest[1..end]).parse::<usize>() else {
            break;
        };
        let start = end + 2;
        items.push(rest[start..start + len].to_vec());
        rest = &rest[start + len + 2..];
    }
    items
}

/// The bulk-string payload of a raw `GET` reply, or `None` for a nil reply.
pub fn bulk_payload(reply: &[u8]) -> Option<Vec<u8>> {
    if reply.starts_with(b"$-1") {
        return None;
    }
    let header_end = reply.windows(2).position(|w| w == b"\r\n")?;
    let len: usize = String::from_utf8_lossy(&reply[1..header_end])
        .parse()
        .ok()?;
    Some(reply[header_end + 2..header_end + 2 + len].to_vec())
}
