//! `unitas bench`: a load driver for any Matrix homeserver's client API (this node, or Synapse
//! beside it for comparison). It registers users, fills one room with messages from concurrent
//! senders, and reports throughput, send latency, the delay until another user's waiting
//! `/sync` returns a message, and (with `--pid`) the server's resident memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Value,
) -> Result<Value, String> {
    let mut request = client.request(method, &url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let value: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        Ok(value)
    } else {
        Err(format!("{url}: {status}: {value}"))
    }
}

/// Runs the load and prints the figures.
pub async fn run(options: BenchOptions) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .map_err(|e| e.to_string())?;
    let base = options.url.trim_end_matches('/').to_owned();
    let c = format!("{base}/_matrix/client/v3");
    let run_id: u32 = std::process::id();
    let started = Instant::now();

    let mut users = Vec::new();
    for i in 0..options.users.max(2) {
        let body = json!({"username": format!("bench{run_id}u{i}"), "password": "bench-password", "auth": {"type": "m.login.dummy"}, "inhibit_login": false});
        let registered = call(
            &client,
            reqwest::Method::POST,
            format!("{c}/register"),
            None,
            body,
        )
        .await?;
        let token = registered["access_token"]
            .as_str()
            .ok_or("no access token")?
            .to_owned();
        users.push(User { token });
    }
    let created = call(
        &client,
        reqwest::Method::POST,
        format!("{c}/createRoom"),
        Some(&users[0].token),
        json!({"preset": "public_chat"}),
    )
    .await?;
    let room = created["room_id"].as_str().ok_or("no room_id")?.to_owned();
    for user in &users[1..] {
        call(
            &client,
            reqwest::Method::POST,
            format!("{c}/join/{}", urlencode(&room)),
            Some(&user.token),
            json!({}),
        )
        .await?;
    }
    let send_prefix = format!("{c}/rooms/{}/send/m.room.message/", urlencode(&room));
    let send_url = move |txn: String| format!("{send_prefix}{txn}");

    // 1. One sender, one message at a time.
    let mut sequential = Vec::with_capacity(options.sequential);
    for i in 0..options.sequential {
        let t = Instant::now();
        call(
            &client,
            reqwest::Method::PUT,
            send_url(format!("s{run_id}_{i}")),
            Some(&users[0].token),
            json!({"msgtype": "m.text", "body": format!("sequential {i}")}),
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
        let (client, next, users, send_url) = (
            client.clone(),
            next.clone(),
            users.clone(),
            send_url.clone(),
        );
        let total = options.messages;
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let user = &users[s % users.len()];
                let t = Instant::now();
                call(
                    &client,
                    reqwest::Method::PUT,
                    send_url(format!("c{run_id}_{i}")),
                    Some(&user.token),
                    json!({"msgtype": "m.text", "body": format!("concurrent {i}")}),
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
    let sync_url = format!("{c}/sync");
    let filter = json!({"room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": true}}, "presence": {"types": []}}).to_string();
    // The second user's sync after `since` (initial without), waiting up to `timeout` ms.
    let sync = |since: Option<&str>, timeout: &str| {
        let mut query = vec![("filter", filter.as_str()), ("timeout", timeout)];
        query.extend(since.map(|s| ("since", s)));
        client
            .get(&sync_url)
            .query(&query)
            .bearer_auth(&users[1].token)
            .send()
    };
    let answer = |response: Result<reqwest::Response, reqwest::Error>| async move {
        let body: Value = response
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let next = body["next_batch"].as_str().unwrap_or_default().to_owned();
        Ok::<_, String>((body, next))
    };
    let (_, mut since) = answer(sync(None, "0").await).await?;
    // How long the catch-up waits for anything more before it counts the server as quiet.
    const SETTLE_MS: &str = "25";
    let mut wakeups = Vec::with_capacity(options.wakeups);
    for i in 0..options.wakeups {
        // Catch up first (a server may still have something to say about the last message,
        // such as its unread counts, which may come a few milliseconds after the message):
        // until a short long-poll comes back empty. The long-poll below then waits for the new
        // message alone.
        loop {
            let (caught_up, next) = answer(sync(Some(&since), SETTLE_MS).await).await?;
            since = next;
            if caught_up["rooms"]["join"]
                .as_object()
                .is_none_or(|rooms| rooms.is_empty())
            {
                break;
            }
        }
        let mut poll = tokio::spawn(sync(Some(&since), "30000"));
        // Let the long-poll reach the server before sending.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let sent_at = Instant::now();
        call(
            &client,
            reqwest::Method::PUT,
            send_url(format!("w{run_id}_{i}")),
            Some(&users[0].token),
            json!({"msgtype": "m.text", "body": format!("wake {i}")}),
        )
        .await?;
        // Until a response has the message (a server may answer first with something else,
        // such as new unread counts).
        let wanted = format!("wake {i}");
        let woke = loop {
            let (body, next) = answer(poll.await.map_err(|e| e.to_string())?).await?;
            let at = sent_at.elapsed();
            since = next;
            let has_it = body["rooms"]["join"]
                .as_object()
                .into_iter()
                .flat_map(|rooms| rooms.values())
                .flat_map(|room| room["timeline"]["events"].as_array().into_iter().flatten())
                .any(|event| event["content"]["body"] == wanted.as_str());
            if has_it {
                break at;
            }
            poll = tokio::spawn(sync(Some(&since), "30000"));
        };
        wakeups.push(woke);
    }

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "load against {base} ({} users, one room)",
        options.users.max(2)
    );
    println!(
        "  sequential sends      {} messages   p50 {:.2} ms   p99 {:.2} ms",
        options.sequential,
        ms(percentile(&mut sequential, 0.5)),
        ms(percentile(&mut sequential, 0.99))
    );
    println!(
        "  concurrent sends      {} messages, {} senders   {:.0} messages/s   p50 {:.2} ms   p99 {:.2} ms",
        options.messages,
        options.senders,
        throughput,
        ms(percentile(&mut concurrent, 0.5)),
        ms(percentile(&mut concurrent, 0.99))
    );
    println!(
        "  sync wake-up          {} round trips   p50 {:.2} ms   p99 {:.2} ms (send start to sync return)",
        options.wakeups,
        ms(percentile(&mut wakeups, 0.5)),
        ms(percentile(&mut wakeups, 0.99))
    );
    if let Some(pid) = options.pid {
        match rss_kib(pid) {
            Some(kib) => println!("  server RSS            {:.1} MiB", kib as f64 / 1024.0),
            None => println!("  server RSS            unknown (no /proc/{pid}/status)"),
        }
    }
    println!(
        "  total time            {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
