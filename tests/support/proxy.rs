//! A TCP proxy between a client and a real Redis, for fault tests: it passes bytes both ways, and can hold the
//! server's replies on one connection (by the order connections were accepted) until told to release them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A proxy on a free loopback port in front of `127.0.0.1:<target>`; stops when dropped.
pub struct Proxy {
    port: u16,
    accepted: Arc<AtomicUsize>,
    /// The index of the connection whose replies are held, if any.
    hold: watch::Sender<Option<usize>>,
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
        let (hold, _) = watch::channel(None);
        let task = tokio::spawn({
            let accepted = accepted.clone();
            let hold = hold.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let index = accepted.fetch_add(1, Ordering::SeqCst);
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                        continue;
                    };
                    tokio::spawn(pipe(client, server, index, hold.subscribe()));
                }
            }
        });
        Proxy {
            port,
            accepted,
            hold,
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

    /// Holds every reply on connection `index` (0 for the first accepted) from now on, until [`release`].
    pub fn hold_replies(&self, index: usize) {
        self.hold.send_replace(Some(index));
    }

    /// Lets held replies through.
    pub fn release(&self) {
        self.hold.send_replace(None);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies bytes both ways; server-to-client bytes wait while `hold` names this connection.
async fn pipe(
    client: TcpStream,
    server: TcpStream,
    index: usize,
    mut hold: watch::Receiver<Option<usize>>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = client_read.read(&mut buf).await {
            if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let downstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = server_read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if hold.wait_for(|held| *held != Some(index)).await.is_err() {
                break;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
}
