//! Hostile receivers: raw TCP servers on 127.0.0.1 that read a webhook request as any receiver would and then
//! misbehave, one way each (see [`Mode`]). Each records the requests it read, so that a test can compare
//! them with the delivery log. Every connection is handled for at most [`CONNECTION_LIFETIME`], and dropping
//! the receiver stops it and every connection it holds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The longest a connection is kept (an endless body or a stall end by then at the latest).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// The largest request head read.
const MAX_HEAD: usize = 64 * 1024;

/// The body of [`Mode::NulBody`].
pub const NUL_BODY: &[u8] = b"ok\0\0accepted\0";
/// How [`Mode::InvalidUtf8`]'s body starts: "café", two bytes that are never UTF-8, a lead byte without its
/// continuation.
pub const INVALID_UTF8_HEAD: &[u8] = b"caf\xc3\xa9 \xff\xfe ok \xc3\x28 end";
/// The size of [`Mode::HugeBody`]'s body.
pub const HUGE_BODY_BYTES: usize = 8 * 1024 * 1024;
/// The status line [`Mode::StallAfterStatusLine`] sends before it stalls.
pub const STATUS_LINE: &[u8] = b"HTTP/1.1 200 OK\r\n";
/// What [`Mode::NotHttp`] answers.
pub const NOT_HTTP: &[u8] = b"\x00\x01\x02 SSH-2.0-certainly-not-http \xff\xfe\r\n\r\n";

/// How the receiver misbehaves once it has read a request.
#[derive(Debug, Clone)]
pub enum Mode {
    /// `200`, its body [`NUL_BODY`] (NUL bytes, which PostgreSQL's `text` refuses).
    NulBody,
    /// `200`, its body [`invalid_utf8_body`] of this excerpt limit.
    InvalidUtf8 { excerpt_limit: usize },
    /// `200` with a `Content-Length` of 8 MiB, and the 8 MiB ([`huge_body`]).
    HugeBody,
    /// `200`, chunked, and chunks of [`endless_byte`] that never end (until the client goes away).
    EndlessChunked,
    /// [`NOT_HTTP`], then the connection closed.
    NotHttp,
    /// The connection reset (RST: `SO_LINGER` 0, then closed) without a byte of answer.
    Reset,
    /// [`STATUS_LINE`], then nothing (the connection held open until the client goes away).
    StallAfterStatusLine,
    /// `302 Found` with `Location: <the URL>`.
    Redirect(String),
}

/// A request the receiver read.
#[derive(Debug, Clone)]
pub struct HostileRequest {
    /// Its `webhook-id` header.
    pub webhook_id: Option<String>,
    /// Its body.
    pub body: Vec<u8>,
    /// When it was read.
    pub at: Instant,
}

/// A hostile receiver.
pub struct HostileReceiver {
    /// Its address.
    pub addr: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<HostileRequest>>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl HostileReceiver {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<HostileRequest>>> = Arc::default();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let huge = Arc::new(huge_body());
        let accept = tokio::spawn({
            let (requests, tasks) = (requests.clone(), tasks.clone());
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (mode, requests, huge) = (mode.clone(), requests.clone(), huge.clone());
                    let task = tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            CONNECTION_LIFETIME,
                            serve(stream, mode, requests, huge),
                        )
                        .await;
                    });
                    let mut tasks = tasks.lock().unwrap();
                    tasks.retain(|t| !t.is_finished());
                    tasks.push(task);
                }
            }
        });
        Self {
            addr,
            requests,
            tasks,
            accept,
        }
    }

    /// The URL of `path` on it.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The requests read so far, in arrival order.
    pub fn requests(&self) -> Vec<HostileRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for HostileReceiver {
    fn drop(&mut self) {
        self.accept.abort();
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// The 8 MiB body of [`Mode::HugeBody`]: the printable ASCII characters over and over.
pub fn huge_body() -> Vec<u8> {
    (0..HUGE_BODY_BYTES)
        .map(|i| b' ' + (i % 95) as u8)
        .collect()
}

/// [`INVALID_UTF8_HEAD`], then `x`s up to one byte short of `excerpt_limit`, then "€" (3 bytes: the limit cuts
/// it after its first) and more text.
pub fn invalid_utf8_body(excerpt_limit: usize) -> Vec<u8> {
    let mut body = INVALID_UTF8_HEAD.to_vec();
    body.resize(excerpt_limit - 1, b'x');
    body.extend_from_slice("€ and more after the limit".as_bytes());
    body
}

/// The n-th byte of [`Mode::EndlessChunked`]'s body.
pub fn endless_byte(n: usize) -> u8 {
    b'a' + (n % 26) as u8
}

async fn serve(
    mut stream: TcpStream,
    mode: Mode,
    requests: Arc<Mutex<Vec<HostileRequest>>>,
    huge: Arc<Vec<u8>>,
) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    requests.lock().unwrap().push(request);
    match mode {
        Mode::NulBody => answer_200(&mut stream, NUL_BODY).await,
        Mode::InvalidUtf8 { excerpt_limit } => {
            answer_200(&mut stream, &invalid_utf8_body(excerpt_limit)).await
        }
        Mode::HugeBody => answer_200(&mut stream, &huge).await,
        Mode::EndlessChunked => endless(&mut stream).await,
        Mode::NotHttp => {
            let _ = stream.write_all(NOT_HTTP).await;
            let _ = stream.shutdown().await;
        }
        Mode::Reset => {
            // Closing with a zero linger sends RST instead of FIN.
            let _ = stream.set_zero_linger();
            drop(stream);
        }
        Mode::StallAfterStatusLine => {
            let _ = stream.write_all(STATUS_LINE).await;
            // Held until the client gives up (EOF or error).
            let mut sink = [0u8; 1024];
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        }
        Mode::Redirect(location) => {
            let head = format!(
                "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    }
}

/// Reads one request: its head, then as many body bytes as its `Content-Length` says.
async fn read_request(stream: &mut TcpStream) -> Option<HostileRequest> {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length")?.parse().ok()?;
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(HostileRequest {
        webhook_id: header("webhook-id"),
        body: buf[head_end..head_end + length].to_vec(),
        at: Instant::now(),
    })
}

async fn answer_200(stream: &mut TcpStream, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // The client may stop reading at any point (it keeps only an excerpt): write errors end the answer.
    if stream.write_all(head.as_bytes()).await.is_ok() && stream.write_all(body).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

/// A chunked body that goes on until the client stops reading and goes away (or the connection's lifetime).
async fn endless(stream: &mut TcpStream) {
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
    if stream.write_all(head).await.is_err() {
        return;
    }
    const CHUNK: usize = 256;
    let mut sent = 0usize;
    loop {
        let data: Vec<u8> = (sent..sent + CHUNK).map(endless_byte).collect();
        let mut frame = format!("{CHUNK:x}\r\n").into_bytes();
        frame.extend_from_slice(&data);
        frame.extend_from_slice(b"\r\n");
        if stream.write_all(&frame).await.is_err() {
            return;
        }
        sent += CHUNK;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
