//! `wasmhook listen --forward http://localhost:3000/hook`: a temporary
//! subscription delivered over this command's own connection to the
//! server (server-sent events), each delivery POSTed to the local URL with
//! the subscription's signature headers, and the local answer reported
//! back as the attempt's outcome (the server's side: `deliver::listen`).

use std::time::{Duration, Instant};

use base64::Engine;
use clap::Args;
use serde_json::{Value, json};

use super::{Api, ClientError, s, seg};

#[derive(Debug, Args)]
pub struct ListenArgs {
    /// The local URL each delivery is POSTed to.
    #[arg(long, value_name = "URL")]
    pub forward: String,
    /// Comma-separated event type patterns (`*`, `message.*`, exact types).
    #[arg(long, default_value = "*")]
    pub events: String,
    /// `builtin:<name>` or an uploaded plugin's id: the deliveries are its
    /// output, exactly as a real endpoint would get them.
    #[arg(long)]
    pub plugin: Option<String>,
    /// The plugin's config, JSON.
    #[arg(long, value_name = "JSON")]
    pub plugin_config: Option<String>,
    /// An application (id or uid): listen to the events sent to it, as its
    /// endpoints get them (without it, the events sent to no application).
    #[arg(long)]
    pub app: Option<String>,
    /// Seconds the subscription outlives a lost connection (a killed CLI).
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub expire_after: u64,
}

/// Local answers are read up to this many bytes.
const LOCAL_BODY_BYTES: usize = 64 * 1024;

pub async fn run(api: &Api, args: ListenArgs, json_out: bool) -> Result<(), ClientError> {
    let forward = reqwest::Url::parse(&args.forward)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            ClientError::Usage(format!(
                "--forward {:?} is not an http(s) URL",
                args.forward
            ))
        })?;
    let mut body = json!({
        "destination": {"type": "listen", "expire_after_secs": args.expire_after},
        "event_types": args.events.split(',').map(str::trim).filter(|e| !e.is_empty()).collect::<Vec<_>>(),
        "description": format!("wasmhook listen → {forward}"),
    });
    if let Some(id) = args.plugin {
        let config: Value = match args.plugin_config {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| ClientError::Usage(format!("--plugin-config is not JSON: {e}")))?,
            None => json!({}),
        };
        body["plugin"] = json!({ "id": id, "config": config });
    }
    if let Some(app) = args.app {
        body["app"] = json!(app);
    }
    let sub = api.call("POST", "/v1/subscriptions", Some(body)).await?;
    let id = s(&sub["id"]);
    if json_out {
        println!(
            "{}",
            json!({"listening": id, "forward": forward.as_str(), "secret": sub["secret"]})
        );
    } else {
        eprintln!(
            "listening: subscription {id} → {forward}\n  its signing secret: {}\n  Ctrl-C stops (and deletes the subscription)",
            s(&sub["secret"])
        );
    }
    flush();
    let outcome = tokio::select! {
        r = follow(api, &id, &forward, json_out) => r,
        _ = crate::server::shutdown_signal() => Ok(()),
    };
    // Whatever ended it: the subscription goes (if it is still there).
    match api
        .call("DELETE", &format!("/v1/subscriptions/{}", seg(&id)), None)
        .await
    {
        Ok(_) | Err(ClientError::NotFound(_)) => {}
        Err(e) => eprintln!("deleting subscription {id} failed ({e}); it expires by itself"),
    }
    outcome
}

/// Reads the stream, reconnecting after a lost connection, until the
/// subscription is gone.
async fn follow(
    api: &Api,
    id: &str,
    forward: &reqwest::Url,
    json_out: bool,
) -> Result<(), ClientError> {
    // No overall timeout: the stream lasts as long as this command.
    // A keep-alive comes every 15 s: a connection silent for longer
    // (a laptop that slept, a NAT that forgot it) is made anew.
    let stream_client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(45))
        .build()
        .map_err(|e| ClientError::Usage(e.to_string()))?;
    // The local receiver: no redirects (it answers, it does not send us on).
    let local = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| ClientError::Usage(e.to_string()))?;
    let url = format!("{}/v1/subscriptions/{}/listen", api.base, seg(id));
    let mut lost_since: Option<Instant> = None;
    loop {
        let response = stream_client
            .get(&url)
            .bearer_auth(&api.token)
            .header("accept", "text/event-stream")
            .send()
            .await;
        let mut response = match response {
            Ok(r) if r.status().is_success() => r,
            Ok(r) if r.status().as_u16() == 404 => {
                return Err(ClientError::NotFound(format!(
                    "subscription {id} is gone (it expired, or was deleted)"
                )));
            }
            Ok(r) if matches!(r.status().as_u16(), 401 | 403) => {
                return Err(ClientError::Auth(format!(
                    "{}: the key was refused",
                    r.status()
                )));
            }
            other => {
                let why = match other {
                    Ok(r) => format!("HTTP {}", r.status()),
                    Err(e) => e.to_string(),
                };
                let since = *lost_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(120) {
                    return Err(ClientError::Unavailable(format!("{}: {why}", api.base)));
                }
                eprintln!("connection to {} lost ({why}); reconnecting", api.base);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        lost_since = None;
        let mut parser = SseParser::default();
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                // The server ended the stream (it stops) or the connection
                // broke: connect again.
                Ok(None) | Err(_) => break,
            };
            for (event, data) in parser.feed(&chunk) {
                if event == "ready" {
                    if json_out {
                        println!("{}", json!({ "connected": id }));
                    } else {
                        eprintln!("connected: deliveries are forwarded as they come");
                    }
                    flush();
                    continue;
                }
                if event != "delivery" {
                    continue;
                }
                let Ok(frame) = serde_json::from_str::<Value>(&data) else {
                    continue;
                };
                let (api_base, token, local, forward, id) = (
                    api.base.clone(),
                    api.token.clone(),
                    local.clone(),
                    forward.clone(),
                    id.to_string(),
                );
                let answers = stream_client.clone();
                tokio::spawn(async move {
                    let answer = forward_one(&local, &forward, &frame).await;
                    report(&frame, &answer, json_out);
                    let url = format!("{api_base}/v1/subscriptions/{}/listen/answers", seg(&id));
                    let sent = answers
                        .post(url)
                        .bearer_auth(token)
                        .timeout(Duration::from_secs(30))
                        .json(&answer)
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => {}
                        Ok(r) => eprintln!(
                            "the server did not take the answer for {} (HTTP {}): the attempt timed out",
                            s(&frame["delivery_id"]),
                            r.status()
                        ),
                        Err(e) => eprintln!("reporting the answer failed: {e}"),
                    }
                });
            }
        }
        eprintln!("the stream from {} ended; reconnecting", api.base);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// POSTs one delivery to the local URL: the answer to report.
async fn forward_one(local: &reqwest::Client, forward: &reqwest::Url, frame: &Value) -> Value {
    let id = frame["id"].clone();
    let body = match base64::engine::general_purpose::STANDARD.decode(s(&frame["body"])) {
        Ok(b) => b,
        Err(e) => return json!({"id": id, "status": null, "error": format!("bad body: {e}")}),
    };
    // The server waits `timeout_ms` for the answer: the local request gets
    // that less a margin for reporting it back.
    let timeout = Duration::from_millis(
        frame["timeout_ms"]
            .as_u64()
            .unwrap_or(15_000)
            .saturating_sub(500)
            .max(100),
    );
    let mut request = local
        .post(forward.clone())
        .timeout(timeout)
        .header("content-type", s(&frame["content_type"]))
        .body(body);
    for pair in frame["headers"].as_array().into_iter().flatten() {
        if let (Some(name), Some(value)) = (pair[0].as_str(), pair[1].as_str()) {
            request = request.header(name, value);
        }
    }
    let started = Instant::now();
    match request.send().await {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let mut body = Vec::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                let room = LOCAL_BODY_BYTES - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= LOCAL_BODY_BYTES {
                    break;
                }
            }
            json!({
                "id": id,
                "status": status,
                "body": String::from_utf8_lossy(&body),
                "duration_ms": started.elapsed().as_millis() as u64,
            })
        }
        Err(e) => json!({
            "id": id,
            "status": null,
            "duration_ms": started.elapsed().as_millis() as u64,
            "error": if e.is_timeout() { format!("no answer within {} ms", timeout.as_millis()) } else { e.to_string() },
        }),
    }
}

/// One line per delivery: time, local status (or error), duration, type, id.
fn report(frame: &Value, answer: &Value, json_out: bool) {
    if json_out {
        println!(
            "{}",
            json!({
                "delivery_id": frame["delivery_id"],
                "event_type": frame["event_type"],
                "status": answer["status"],
                "duration_ms": answer["duration_ms"],
                "error": answer["error"],
            })
        );
    } else {
        let status = match answer["status"].as_u64() {
            Some(code) => code.to_string(),
            None => format!("error: {}", s(&answer["error"])),
        };
        println!(
            "{}  {}  {} ms  {}  {}",
            jiff::Timestamp::now().strftime("%H:%M:%S"),
            status,
            s(&answer["duration_ms"]),
            s(&frame["event_type"]),
            s(&frame["delivery_id"]),
        );
    }
    flush();
}

fn flush() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// Server-sent events from a byte stream: `(event, data)` per event.
#[derive(Default)]
struct SseParser {
    buffer: Vec<u8>,
    event: String,
    data: String,
}

impl SseParser {
    fn feed(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        self.buffer.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() || !self.event.is_empty() {
                    let event = std::mem::take(&mut self.event);
                    let data = std::mem::take(&mut self.data);
                    out.push((
                        if event.is_empty() {
                            "message".into()
                        } else {
                            event
                        },
                        data,
                    ));
                }
                continue;
            }
            if line.starts_with(':') {
                continue; // a keep-alive comment
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.event = value.to_string(),
                "data" => {
                    if !self.data.is_empty() {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::SseParser;

    #[test]
    fn events_split_across_chunks_and_comments_are_skipped() {
        let mut p = SseParser::default();
        assert!(p.feed(b": keep-alive\n\nevent: deliv").is_empty());
        let got = p.feed(b"ery\ndata: {\"a\":\ndata: 1}\r\n\r\nevent: ready\ndata: {}\n\n");
        assert_eq!(
            got,
            vec![
                ("delivery".to_string(), "{\"a\":\n1}".to_string()),
                ("ready".to_string(), "{}".to_string())
            ]
        );
    }
}
