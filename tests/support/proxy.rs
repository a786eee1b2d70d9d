//! A fault proxy between a client and a real Redis: it passes bytes both ways, and can be switched while
//! traffic flows to delay every reply, black-hole everything, reset every connection, leave connections
//! half-open, garble every reply, answer `NOAUTH` on open connections, or hold the replies of one connection
//! until released.
//!
//! The link's faults keep to what TCP can do: a black hole delays bytes (they arrive, in order, once the path is
//! back, or never if the connection is given up first); a half-open connection is one whose peer is gone, so it
//! never answers again, whatever the mode later.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// What the proxy does with the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes pass both ways.
    Pass,
    /// Every reply chunk waits this long before it is passed on.
    Delay(Duration),
    /// Nothing passes either way and nothing is closed, as behind a dead link: what is sent waits, and passes
    /// (in order) once the mode changes.
    BlackHole,
    /// Every connection is reset (RST) at once, and new ones are reset as they arrive.
    Reset,
    /// The open connections lose their peer: they stay open, swallow what is sent and never answer again,
    /// even after the mode changes. New connections are served as usual.
    HalfOpen,
    /// Every reply chunk arrives with its first byte replaced by one that starts no RESP frame (`@`), as from a
    /// server that is not Redis, or a middlebox that rewrites what passes. Requests pass unchanged.
    Garble,
    /// The open connections lose their login and their server: the proxy answers each of their commands
    /// `-NOAUTH` itself, and passes nothing the server sends them, even after the mode changes, as a managed
    /// Redis's proxy does once the node behind it was replaced. New connections are served as usual.
    NoAuth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    mode: Mode,
    /// The index of the connection whose replies are held, if any.
    hold: Option<usize>,
}

/// A proxy on a free loopback port in front of `127.0.0.1:<target>`; stops when dropped.
pub struct Proxy {
    port: u16,
    accepted: Arc<AtomicUsize>,
    /// The port new connections are passed to.
    target: Arc<AtomicU16>,
    state: watch::Sender<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to the Redis on `target` (a loopback port).
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let target = Arc::new(AtomicU16::new(target));
        let (state, _) = watch::channel(State {
            mode: Mode::Pass,
            hold: None,
        });
        let task = tokio::spawn({
            let accepted = accepted.clone();
            let target = target.clone();
            let state = state.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let index = accepted.fetch_add(1, Ordering::SeqCst);
                    if state.borrow().mode == Mode::Reset {
                        reset(client);
                        continue;
                    }
                    let to = target.load(Ordering::SeqCst);
                    let Ok(server) = TcpStream::connect(("127.0.0.1", to)).await else {
                        continue;
                    };
                    tokio::spawn(pipe(client, server, index, state.subscribe()));
                }
            }
        });
        Proxy {
            port,
            accepted,
            target,
            state,
            task,
        }
    }

    /// `redis://127.0.0.1:<proxy port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// How many connections the proxy has accepted.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Passes new connections to the Redis on `target` from now on; open ones stay with the one they reached,
    /// as when a DNS name or a virtual IP moves to another server.
    pub fn retarget(&self, target: u16) {
        self.target.store(target, Ordering::SeqCst);
    }

    /// Switches what the proxy does, for open connections and new ones alike.
    pub fn set(&self, mode: Mode) {
        self.state.send_modify(|state| state.mode = mode);
    }

    /// Holds every reply on connection `index` (0 for the first accepted) from now on, until [`release`].
    pub fn hold_replies(&self, index: usize) {
        self.state.send_modify(|state| state.hold = Some(index));
    }

    /// Lets held replies through.
    pub fn release(&self) {
        self.state.send_modify(|state| state.hold = None);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Closes `stream` with a reset (RST) rather than a FIN.
fn reset(stream: TcpStream) {
    zero_linger(&stream);
    drop(stream);
}

/// Makes closing `stream` send a reset (RST). A zero linger never blocks the thread on drop, which is what
/// the deprecation warns of (a positive one does).
#[allow(deprecated)]
fn zero_linger(stream: &TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
}

/// A flag set when the proxy switches to `mode` while the connection is open (a connection made while the mode
/// already holds is spared until the next switch to it); it stays set whatever the mode later.
fn lost_at(state: &watch::Receiver<State>, mode: Mode) -> Arc<std::sync::atomic::AtomicBool> {
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn({
        let lost = lost.clone();
        let mut state = state.clone();
        async move {
            if state.borrow().mode == mode && state.wait_for(|s| s.mode != mode).await.is_err() {
                return;
            }
            if state.wait_for(|s| s.mode == mode).await.is_ok() {
                lost.store(true, Ordering::SeqCst);
            }
        }
    });
    lost
}

/// Takes the whole RESP commands (arrays of bulk strings, as clients send them) from the front of `pending` and
/// returns how many there were; an incomplete one stays.
fn whole_commands(pending: &mut Vec<u8>) -> usize {
    /// The number on the line at `at` after its type byte, and where the next line starts.
    fn line(bytes: &[u8], at: usize) -> Option<(usize, usize)> {
        let end = at + bytes.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        let number = std::str::from_utf8(bytes.get(at + 1..end)?)
            .ok()?
            .parse()
            .ok()?;
        Some((number, end + 2))
    }
    /// Where the command starting at `at` ends, if all of it is there.
    fn command(bytes: &[u8], at: usize) -> Option<usize> {
        let (count, mut next) = line(bytes, at)?;
        for _ in 0..count {
            let (len, data) = line(bytes, next)?;
            next = data + len + 2;
            if next > bytes.len() {
                return None;
            }
        }
        Some(next)
    }
    let (mut commands, mut at) = (0, 0);
    while let Some(end) = command(pending, at) {
        commands += 1;
        at = end;
    }
    pending.drain(..at);
    commands
}

/// Copies bytes both ways as the proxy's state says, until either side closes or the mode resets it. The
/// client's side always closes with a reset (RST), as a dead link or a killed peer does.
async fn pipe(client: TcpStream, server: TcpStream, index: usize, state: watch::Receiver<State>) {
    zero_linger(&client);
    // Every chunk is passed on as it comes, as a link does: no small write waits on the one before it.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Set once the connection has gone half-open: from then on it swallows everything, both ways.
    let dead = lost_at(&state, Mode::HalfOpen);
    // Set once the connection has lost its login: from then on the proxy answers its commands itself.
    let deauthed = lost_at(&state, Mode::NoAuth);
    // A connection that lost its login lost its server too (its state: a subscription, client tracking): nothing
    // the server sends it arrives.
    let replaced = deauthed.clone();
    // Replies are read as they arrive, each with its arrival time, so that a delay is a link's latency: every
    // chunk passes `delay` after it arrived, however many arrived meanwhile.
    let (arrivals, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let mut up_state = state.clone();
    let up_dead = dead.clone();
    let refusals = arrivals.clone();
    let upstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        // What a deauthed connection sent that does not end a command yet.
        let mut pending = Vec::new();
        while let Ok(n) = client_read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if up_dead.load(Ordering::SeqCst) {
                continue;
            }
            if deauthed.load(Ordering::SeqCst) {
                pending.extend_from_slice(&buf[..n]);
                let commands = whole_commands(&mut pending);
                let reply = b"-NOAUTH Authentication required.\r\n".repeat(commands);
                if refusals.send((Instant::now(), reply)).is_err() {
                    break;
                }
                continue;
            }
            // A black hole holds the bytes until the path is back.
            if up_state
                .wait_for(|s| s.mode != Mode::BlackHole)
                .await
                .map_or(true, |s| s.mode == Mode::Reset)
            {
                break;
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = server_read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if replaced.load(Ordering::SeqCst) {
                continue;
            }
            if arrivals.send((Instant::now(), buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    let mut down_state = state.clone();
    let downstream = async move {
        while let Some((at, chunk)) = arrived.recv().await {
            let Ok(now) = down_state
                .wait_for(|s| s.hold != Some(index) && s.mode != Mode::BlackHole)
                .await
                .map(|s| *s)
            else {
                break;
            };
            if dead.load(Ordering::SeqCst) {
                continue;
            }
            match now.mode {
                Mode::Delay(delay) => tokio::time::sleep_until(at + delay).await,
                Mode::Reset => break,
                _ => {}
            }
            let mut chunk = chunk;
            if let (Mode::Garble, Some(first)) = (now.mode, chunk.first_mut()) {
                *first = b'@';
            }
            if client_write.write_all(&chunk).await.is_err() {
                break;
            }
        }
    };
    let mut reset_state = state;
    let reset_requested = async move {
        let _ = reset_state.wait_for(|s| s.mode == Mode::Reset).await;
    };
    // Whichever ends first, both halves are dropped: the client's socket closes with RST.
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
        _ = reset_requested => {}
    }
    reader.abort();
}
