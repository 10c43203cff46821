//! An upstream that misbehaves on purpose, for the fault-injection tests: it reads each
//! request head and answers with bytes the test chose (a 101, a broken chunk, a cut-off body),
//! then closes the connection.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// A reply that is never sent: the upstream stalls after reading the head.
pub const STALL: &[u8] = b"(stall)";

/// A running faulty upstream.
pub struct Faulty {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Faulty {
    /// Answers every request with `reply`, written in one piece, then closes. An empty `reply`
    /// closes at once; [`STALL`] never answers (the connection stays open, silent).
    pub async fn start(reply: &'static [u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    if reply == STALL {
                        std::future::pending::<()>().await;
                    }
                    let _ignored = stream.write_all(reply).await;
                    let _ignored = stream.shutdown().await;
                });
            }
        });
        Self { addr, task }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.task.abort();
    }
}
