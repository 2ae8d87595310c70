//! `unitas bench`: a load driver for any Matrix homeserver's client API (this node, or Synapse
//! beside it for comparison). It registers users, fills one room with messages from concurrent
//! senders, and reports throughput, send latency, the delay until another user's waiting
//! `/sync` returns a message, and (with `--pid`) the server's resident memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use serde_json::{Value, json};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Client API base URL.
    pub url: String,
    /// Users to register.
    pub users: usize,
    /// Messages for the throughput run.
    pub messages: usize,
    /// Concurrent senders in the throughput run.
    pub senders: usize,
    /// Messages sent one at a time for the latency run.
    pub sequential: usize,
    /// Round trips for the sync wake-up run.
    pub wakeups: usize,
    /// Server process to read the RSS of.
    pub pid: Option<u32>,
}

struct User {
    token: String,
}

/// Where the requests go: host and port to connect to, the `Host` header, and the path of the
/// client API (`/_matrix/client/v3` under the URL's own path).
#[derive(Clone)]
struct Target {
    address: String,
    host: HeaderValue,
    api: String,
}

impl Target {
    fn parse(base: &str) -> Result<Target, String> {
        let url = url::Url::parse(base).map_err(|e| format!("--url {base}: {e}"))?;
        if url.scheme() != "http" {
            return Err(format!(
                "--url {base}: the load driver speaks plain HTTP (the client listener, not a TLS proxy in front of it)"
            ));
        }
        let host = url
            .host_str()
            .ok_or_else(|| format!("--url {base}: no host"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        Ok(Target {
            address: format!("{host}:{port}"),
            host: HeaderValue::from_str(&authority).map_err(|e| format!("--url {base}: {e}"))?,
            api: format!("{}/_matrix/client/v3", url.path().trim_end_matches('/')),
        })
    }
}

/// One user's keep-alive HTTP/1.1 connection (or an anonymous one, to register). It is
/// hyper's bare client connection (no pool, no URL parsing per request, a timed send's answer
/// drained but not decoded): the driver shares the machine's cores with the server, and every
/// microsecond of its own per request is one the server does not get. reqwest with JSON
/// decoding took about 45 us of CPU per message in the concurrent run.
struct Sender {
    send: SendRequest<Full<Bytes>>,
    target: Target,
    authorization: Option<HeaderValue>,
}

impl Sender {
    async fn connect(target: &Target, token: Option<&str>) -> Result<Sender, String> {
        let authorization = token
            .map(|token| HeaderValue::from_str(&format!("Bearer {token}")))
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok(Sender {
            send: Self::open(target).await?,
            target: target.clone(),
            authorization,
        })
    }

    async fn open(target: &Target) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = tokio::net::TcpStream::connect(&target.address)
            .await
            .map_err(|e| format!("{}: {e}", target.address))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (send, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("{}: {e}", target.address))?;
        // Ends when the sender is dropped or the server closes the connection.
        tokio::spawn(connection);
        Ok(send)
    }

    /// PUT `body` to `path`; an error unless the answer is a success.
    async fn put(&mut self, path: String, body: &Value) -> Result<(), String> {
        let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        self.request(hyper::Method::PUT, path, body).await.map(drop)
    }

    /// POST `body` to the client API's `endpoint`: the answer's JSON.
    async fn post(&mut self, endpoint: &str, body: &Value) -> Result<Value, String> {
        let path = format!("{}/{endpoint}", self.target.api);
        let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        let answer = self.request(hyper::Method::POST, path, body).await?;
        serde_json::from_slice(&answer).map_err(|e| format!("{endpoint}: {e}"))
    }

    /// The answer's body, or an error unless the status is a success.
    async fn request(
        &mut self,
        method: hyper::Method,
        path: String,
        body: Vec<u8>,
    ) -> Result<Bytes, String> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(&path)
            .header(HOST, self.target.host.clone());
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        if !body.is_empty() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("{path}: {e}"))?;
        // A server may close a keep-alive connection that was idle (between the runs).
        if self.send.is_closed() {
            self.send = Self::open(&self.target).await?;
        }
        self.send
            .ready()
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let response = self
            .send
            .send_request(request)
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let status = response.status();
        let answer = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{path}: {e}"))?
            .to_bytes();
        if status.is_success() {
            Ok(answer)
        } else {
            Err(format!(
                "{path}: {status}: {}",
                String::from_utf8_lossy(&answer)
            ))
        }
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index.min(samples.len() - 1)]
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the load and returns the figures.
pub async fn run(options: BenchOptions) -> Result<BenchReport, String> {
    let base = options.url.trim_end_matches('/').to_owned();
    let target = Target::parse(&base)?;
    let run_id: u32 = std::process::id();
    let started = Instant::now();

    let mut users = Vec::new();
    let mut anonymous = Sender::connect(&target, None).await?;
    for i in 0..options.users.max(2) {
        let body = json!({"username": format!("bench{run_id}u{i}"), "password": "bench-password", "auth": {"type": "m.login.dummy"}, "inhibit_login": false});
        let registered = anonymous.post("register", &body).await?;
        let token = registered["access_token"]
            .as_str()
            .ok_or("no access token")?
            .to_owned();
        users.push(User { token });
    }
    drop(anonymous);
    let mut first = Sender::connect(&target, Some(&users[0].token)).await?;
    let created = first
        .post("createRoom", &json!({"preset": "public_chat"}))
        .await?;
    let room = created["room_id"].as_str().ok_or("no room_id")?.to_owned();
    for user in &users[1..] {
        Sender::connect(&target, Some(&user.token))
            .await?
            .post(&format!("join/{}", urlencode(&room)), &json!({}))
            .await?;
    }
    let send_prefix = format!(
        "{}/rooms/{}/send/m.room.message/",
        target.api,
        urlencode(&room)
    );
    let send_url = move |txn: String| format!("{send_prefix}{txn}");

    // 1. One sender, one message at a time.
    let mut sequential = Vec::with_capacity(options.sequential);
    for i in 0..options.sequential {
        let t = Instant::now();
        first
            .put(
                send_url(format!("s{run_id}_{i}")),
                &json!({"msgtype": "m.text", "body": format!("sequential {i}")}),
            )
            .await?;
        sequential.push(t.elapsed());
    }

    // 2. Concurrent senders.
    let next = Arc::new(AtomicUsize::new(0));
    let users = Arc::new(users);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..options.senders.max(1) {
        let (target, next, users, send_url) = (
            target.clone(),
            next.clone(),
            users.clone(),
            send_url.clone(),
        );
        let total = options.messages;
        tasks.spawn(async move {
            let mut sender = Sender::connect(&target, Some(&users[s % users.len()].token)).await?;
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                sender
                    .put(
                        send_url(format!("c{run_id}_{i}")),
                        &json!({"msgtype": "m.text", "body": format!("concurrent {i}")}),
                    )
                    .await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, String>(latencies)
        });
    }
    let mut concurrent = Vec::new();
    while let Some(result) = tasks.join_next().await {
        concurrent.extend(result.map_err(|e| e.to_string())??);
    }
    let elapsed = start.elapsed();
    let throughput = options.messages as f64 / elapsed.as_secs_f64();

    // 3. Sync wake-up: user 1 long-polls, user 0 sends; how long until the sync returns it.
    let sync_path = format!("{}/sync", target.api);
    let filter = json!({"room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": true}}, "presence": {"types": []}}).to_string();
    // The second user's sync after `since` (initial without), waiting up to `timeout` ms; the
    // task hands the connection back with the time the answer was in, the answer and its
    // `next_batch`.
    let sync = |mut syncer: Sender, since: Option<String>, timeout: &str| {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("filter", &filter)
            .append_pair("timeout", timeout);
        if let Some(since) = &since {
            query.append_pair("since", since);
        }
        let path = format!("{sync_path}?{}", query.finish());
        tokio::spawn(async move {
            let answer = syncer.request(hyper::Method::GET, path, Vec::new()).await;
            let at = Instant::now();
            let answer = answer.and_then(|body| {
                let body: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                let next = body["next_batch"].as_str().unwrap_or_default().to_owned();
                Ok((body, next))
            });
            (syncer, at, answer)
        })
    };
    let joined = |result: Result<_, tokio::task::JoinError>| result.map_err(|e| e.to_string());
    let syncer = Sender::connect(&target, Some(&users[1].token)).await?;
    let (mut syncer, _, answer) = joined(sync(syncer, None, "0").await)?;
    let (_, mut since) = answer?;
    // How long the catch-up waits for anything more before it counts the server as quiet.
    const SETTLE_MS: &str = "25";
    let mut wakeups = Vec::with_capacity(options.wakeups);
    for i in 0..options.wakeups {
        // Catch up first (a server may still have something to say about the last message,
        // such as its unread counts, which may come a few milliseconds after the message):
        // until a short long-poll comes back empty. The long-poll below then waits for the new
        // message alone.
        loop {
            let (back, _, answer) = joined(sync(syncer, Some(since), SETTLE_MS).await)?;
            let (caught_up, next) = answer?;
            (syncer, since) = (back, next);
            if caught_up["rooms"]["join"]
                .as_object()
                .is_none_or(|rooms| rooms.is_empty())
            {
                break;
            }
        }
        let mut poll = sync(syncer, Some(since.clone()), "30000");
        // Let the long-poll reach the server before sending.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let sent_at = Instant::now();
        first
            .put(
                send_url(format!("w{run_id}_{i}")),
                &json!({"msgtype": "m.text", "body": format!("wake {i}")}),
            )
            .await?;
        // Until a response has the message (a server may answer first with something else,
        // such as new unread counts).
        let wanted = format!("wake {i}");
        let woke = loop {
            let (back, at, answer) = joined(poll.await)?;
            let at = at.duration_since(sent_at);
            let (body, next) = answer?;
            (syncer, since) = (back, next);
            let has_it = body["rooms"]["join"]
                .as_object()
                .into_iter()
                .flat_map(|rooms| rooms.values())
                .flat_map(|room| room["timeline"]["events"].as_array().into_iter().flatten())
                .any(|event| event["content"]["body"] == wanted.as_str());
            if has_it {
                break at;
            }
            poll = sync(syncer, Some(since.clone()), "30000");
        };
        wakeups.push(woke);
    }

    Ok(BenchReport {
        base,
        room_id: room,
        users: options.users.max(2),
        senders: options.senders.max(1),
        sequential,
        concurrent,
        throughput,
        wakeups,
        rss_kib: options.pid.and_then(rss_kib),
        pid: options.pid,
        total: started.elapsed(),
    })
}

/// What a run measured.
#[derive(Debug)]
pub struct BenchReport {
    /// The server's client API base URL.
    pub base: String,
    /// The room the messages went to.
    pub room_id: String,
    /// Users registered.
    pub users: usize,
    /// Concurrent senders.
    pub senders: usize,
    /// Send latencies of the sequential run, in order.
    pub sequential: Vec<Duration>,
    /// Send latencies of the concurrent run.
    pub concurrent: Vec<Duration>,
    /// Messages per second of the concurrent run.
    pub throughput: f64,
    /// Sync wake-up delays, in order.
    pub wakeups: Vec<Duration>,
    /// The server's resident memory after the runs (with `--pid`).
    pub rss_kib: Option<u64>,
    /// The server process asked about.
    pub pid: Option<u32>,
    /// The whole run, setup included.
    pub total: Duration,
}

impl BenchReport {
    /// The figures, as `unitas bench` prints them.
    pub fn print(&self) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let p = |samples: &[Duration], at: f64| ms(percentile(&mut samples.to_vec(), at));
        println!(
            "load against {} ({} users, one room)",
            self.base, self.users
        );
        println!(
            "  sequential sends      {} messages   p50 {:.2} ms   p99 {:.2} ms",
            self.sequential.len(),
            p(&self.sequential, 0.5),
            p(&self.sequential, 0.99)
        );
        println!(
            "  concurrent sends      {} messages, {} senders   {:.0} messages/s   p50 {:.2} ms   p99 {:.2} ms",
            self.concurrent.len(),
            self.senders,
            self.throughput,
            p(&self.concurrent, 0.5),
            p(&self.concurrent, 0.99)
        );
        println!(
            "  sync wake-up          {} round trips   p50 {:.2} ms   p99 {:.2} ms (send start to sync return)",
            self.wakeups.len(),
            p(&self.wakeups, 0.5),
            p(&self.wakeups, 0.99)
        );
        match (self.pid, self.rss_kib) {
            (Some(_), Some(kib)) => {
                println!("  server RSS            {:.1} MiB", kib as f64 / 1024.0)
            }
            (Some(pid), None) => {
                println!("  server RSS            unknown (no /proc/{pid}/status)")
            }
            (None, _) => {}
        }
        println!("  total time            {:.1} s", self.total.as_secs_f64());
    }
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn target_keeps_port_and_path_and_refuses_tls() {
        let target = Target::parse("http://127.0.0.1:8008/base/").unwrap();
        assert_eq!(target.address, "127.0.0.1:8008");
        assert_eq!(target.host, "127.0.0.1:8008");
        assert_eq!(target.api, "/base/_matrix/client/v3");
        let target = Target::parse("http://matrix.example").unwrap();
        assert_eq!(target.address, "matrix.example:80");
        assert_eq!(target.host, "matrix.example");
        assert_eq!(target.api, "/_matrix/client/v3");
        let refused = Target::parse("https://matrix.example").err().unwrap();
        assert!(refused.contains("plain HTTP"), "{refused}");
    }
}
