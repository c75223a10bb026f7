//! Poll sources: for a platform with no webhooks yet (oHallo recommends
//! polling its REST API with `updatedSince`), wasmhook fetches a list
//! every `every_secs` and turns each item into events through a bundled
//! format.
//!
//! - **Once per change**: an item's event id is the source, the item's id
//!   and its updated time. An unchanged item polled again is a duplicate
//!   (routed once); a changed one is a new event.
//! - **The cursor follows durability**: every page of a poll is asked from
//!   the same cursor, and the newest updated time seen becomes the cursor
//!   only once all the poll's pages are durably accepted. A crash in
//!   between polls those pages again, and their events are duplicates:
//!   nothing is lost, nothing routed twice. (An API that pages an
//!   `updatedSince` list in ascending order, as oHallo's, is read whole.)
//! - **Through the egress guard**: every fetch goes through the delivery
//!   client, whose resolver refuses private addresses unless allowed; no
//!   redirects are followed.
//! - **Polite**: a 429 or 503 waits for `Retry-After` (at least one
//!   period); other failures back off, doubling up to [`MAX_BACKOFF`]; the
//!   last run, the cursor and the last error are in the API.
//! - **One poller in a cluster**: the node that owns the source's
//!   partition polls it; the others wait and look again each period.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tracing::{info, warn};

use super::{ReceiveError, SUPERVISE_EVERY, Source};
use crate::app::App;
use crate::store::{PollFeed, PollState};

/// The shortest period a source may poll at.
pub const MIN_EVERY_SECS: u64 = 1;
/// The longest period (a day).
pub const MAX_EVERY_SECS: u64 = 86_400;
/// The longest wait after failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1800);
/// Pages followed in one poll (the rest comes at the next).
pub const MAX_PAGES: usize = 20;
/// The largest answer read.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;
/// The most items one page may list.
pub const MAX_ITEMS_PER_PAGE: usize = 1000;
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Formats a poll source may read its items as: the oHallo item formats,
/// and every bundled platform kind (the item is then that kind's body).
pub const FORMATS: &[&str] = &[
    "ohallo-conversation",
    "ohallo-kb-entry",
    "ohallo-attention-item",
    "ohallo",
    "onwebchat",
    "convosphere",
    "helloclient",
    "onehash",
    "standard-webhooks",
];

/// Why a feed's setting is unusable (the address itself is the egress
/// guard's, at every fetch).
pub fn check(feed: &PollFeed) -> Result<(), String> {
    match reqwest::Url::parse(&feed.url) {
        Ok(u) if !u.username().is_empty() || u.password().is_some() => {
            return Err(
                "poll.url carries credentials; give the API's token as the source's secret".into(),
            );
        }
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        _ => return Err(format!("poll.url {:?} is not an http(s) URL", feed.url)),
    }
    if feed.url.len() > 2000 {
        return Err("poll.url is longer than 2000 characters".into());
    }
    if !(MIN_EVERY_SECS..=MAX_EVERY_SECS).contains(&feed.every_secs) {
        return Err(format!(
            "poll.every_secs is {MIN_EVERY_SECS} to {MAX_EVERY_SECS}"
        ));
    }
    for name in feed.headers.keys() {
        crate::sign::check_header_name(name).map_err(|e| format!("poll.headers: {e}"))?;
        if ["authorization", "cookie", "host"].contains(&name.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "poll.headers: {name} is not set here (the bearer token is the source's secret)"
            ));
        }
    }
    if feed.headers.len() > 20
        || feed
            .headers
            .values()
            .any(|v| v.len() > 1000 || v.chars().any(char::is_control))
    {
        return Err(
            "poll.headers: at most 20, each value at most 1000 printable characters".into(),
        );
    }
    // Empty: the source's uploaded adapter reads the items (the caller
    // checks there is one).
    if !feed.format.is_empty() && !FORMATS.contains(&feed.format.as_str()) {
        return Err(format!(
            "poll.format {:?} is not one of {}",
            feed.format,
            FORMATS.join(", ")
        ));
    }
    for (field, pointer) in [
        ("poll.items", Some(&feed.items)),
        ("poll.next", feed.next.as_ref()),
    ] {
        if let Some(p) = pointer
            && !(p.is_empty() || p.starts_with('/'))
        {
            return Err(format!("{field} is a JSON pointer (`/items`), not {p:?}"));
        }
    }
    let name = |field: &str, v: &str| {
        if v.is_empty()
            || v.len() > 100
            || v.chars().any(|c| c.is_control() || c == '&' || c == '=')
        {
            Err(format!(
                "{field} must be 1 to 100 characters, no `&`, `=` or control characters"
            ))
        } else {
            Ok(())
        }
    };
    name("poll.cursor_param", &feed.cursor_param)?;
    name("poll.next_param", &feed.next_param)?;
    name("poll.id_field", &feed.id_field)?;
    name("poll.updated_field", &feed.updated_field)
}

/// The running pollers, one task per `poll` source.
#[derive(Default)]
pub struct Polls {
    running: super::Tasks,
}

impl Polls {
    /// Starts (or restarts, after a change) the source's poller.
    pub fn start(&self, app: &App, source: &Source) {
        if source.poll.is_none() {
            return;
        }
        // A poll's state is its own: no client waits on it.
        let task = tokio::spawn(crate::store::cluster::readers::unacknowledged(run(
            app.clone(),
            source.clone(),
        )));
        self.running.replace(&source.id, task.abort_handle());
    }

    /// Stops a deleted source's poller.
    pub fn stop(&self, source_id: &str) {
        self.running.stop(source_id);
    }

    /// Starts a poller for every stored `poll` source that has none yet
    /// (server start): how many run now.
    pub fn start_all(&self, app: &App) -> Result<usize, crate::store::StoreError> {
        self.running
            .start_missing(app, |s| s.poll.is_some(), |s| self.start(app, s))
    }

    /// Cluster mode: pollers for the sources created through other nodes
    /// ([`super::supervise`]); each polls only while its node owns it.
    pub async fn supervise(self: Arc<Self>, app: App) {
        super::supervise("poll", || self.start_all(&app)).await
    }
}

/// Why a poll ended early.
#[derive(Debug, thiserror::Error)]
enum PollError {
    /// 429 or 503: wait this long before the next.
    #[error("the API asked to wait (HTTP {status}, Retry-After {wait:?})")]
    Wait { status: u16, wait: Option<Duration> },
    #[error("{0}")]
    Failed(String),
    /// Storage, a full plugin pool, the backlog quota: the page is polled
    /// again.
    #[error("the events could not be accepted now: {0}")]
    NotAccepted(#[from] ReceiveError),
}

/// Polls for as long as the source exists.
async fn run(app: App, first: Source) {
    let mut failures: u32 = 0;
    // Items the adapter refused (kept once as dead letters): not again
    // at every poll while the API keeps listing them.
    let mut refused = HashSet::new();
    loop {
        // The source as stored now: changed or deleted on any node.
        let source = match app.store.get_source(&first.tenant_id, &first.id) {
            Ok(Some(s)) => s,
            Ok(None) => {
                info!(source_id = %first.id, "poller stopped: its source is deleted");
                return;
            }
            Err(e) => {
                warn!(source_id = %first.id, error = %e, "poller cannot read its source; retrying");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        let Some(feed) = source.poll.clone() else {
            return;
        };
        let every = Duration::from_secs(feed.every_secs);
        if !app.owns(&source.tenant_id, &source.id) {
            // Look again soon: this node may take the source over.
            tokio::time::sleep(every.min(SUPERVISE_EVERY)).await;
            continue;
        }
        let wait = match poll_once(&app, &source, &feed, &mut refused).await {
            Ok(()) => {
                failures = 0;
                every
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                warn!(source_id = %source.id, error = %e, failures, "poll failed");
                // Recorded only over a state that could be read (a default
                // one would reset the cursor).
                if let Ok(mut state) = app.store.poll_state(&source.id) {
                    state.last_run_at = Some(app.clock.now());
                    state.last_error = Some(e.to_string());
                    state.failures = failures;
                    if let Err(e) = app.store.put_poll_state(&source.id, &state).await {
                        warn!(source_id = %source.id, error = %e, "recording the poll's failure failed");
                    }
                }
                match e {
                    PollError::Wait { wait, .. } => {
                        wait.unwrap_or(every).min(MAX_BACKOFF).max(every)
                    }
                    _ => backoff(every, failures),
                }
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// The wait after `failures` failures in a row: the period doubled per
/// failure, at most [`MAX_BACKOFF`].
fn backoff(every: Duration, failures: u32) -> Duration {
    every
        .saturating_mul(1u32 << failures.min(16))
        .min(MAX_BACKOFF.max(every))
}

/// Polls running at once on this node, whatever the number of sources:
/// each holds an answer and its items in memory.
static CONCURRENT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// Whether `a` is a later time than `b`: as instants when both parse
/// (RFC 3339 with any offset, or Unix seconds), else as text.
fn later(a: &str, b: &str) -> bool {
    fn instant(t: &str) -> Option<jiff::Timestamp> {
        t.parse::<jiff::Timestamp>().ok().or_else(|| {
            t.parse::<i64>()
                .ok()
                .and_then(|s| jiff::Timestamp::from_second(s).ok())
        })
    }
    match (instant(a), instant(b)) {
        (Some(a), Some(b)) => a > b,
        _ => a > b,
    }
}

/// One poll: the pages from the cursor on, each accepted before the next
/// is asked for; the cursor moves once they all are.
async fn poll_once(
    app: &App,
    source: &Source,
    feed: &PollFeed,
    refused: &mut HashSet<String>,
) -> Result<(), PollError> {
    let _slot = CONCURRENT
        .acquire()
        .await
        .map_err(|_| PollError::Failed("shutting down".into()))?;
    let before = app
        .store
        .poll_state(&source.id)
        .map_err(ReceiveError::from)?;
    let mut state = before.clone();
    let mut headers: Vec<(String, String)> = feed
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    if feed.bearer
        && let Some(token) = source.live_secrets(app.clock.now()).first()
    {
        headers.push(("authorization".to_string(), format!("Bearer {token}")));
    }
    let base = reqwest::Url::parse(&feed.url).map_err(|e| PollError::Failed(e.to_string()))?;
    // Every page of this poll is asked from the same cursor; the cursor
    // moves once the poll's pages are all accepted.
    let since = state.cursor.clone();
    let mut newest = since.clone();
    let mut url = with_param(&base, &feed.cursor_param, since.as_deref());
    for _ in 0..MAX_PAGES {
        if !app.owns(&source.tenant_id, &source.id) {
            // Another node took the source over: it goes on from the
            // stored cursor.
            return Ok(());
        }
        let (status, wait, body) = app
            .deliver
            .sender
            .get(&url, &headers, FETCH_TIMEOUT, MAX_ANSWER_BYTES)
            .await
            .map_err(PollError::Failed)?;
        if status == 429 || status == 503 {
            return Err(PollError::Wait {
                status,
                wait: wait.map(Duration::from_secs),
            });
        }
        if !(200..300).contains(&status) {
            return Err(PollError::Failed(format!("HTTP {status} from the API")));
        }
        let answer: Value = serde_json::from_slice(&body)
            .map_err(|e| PollError::Failed(format!("the answer is not JSON: {e}")))?;
        drop(body);
        let page = read_page(&answer, feed).map_err(PollError::Failed)?;
        drop(answer);
        let items: Vec<(String, String)> = page
            .items
            .iter()
            .filter(|i| !refused.contains(&i.key))
            .map(|i| (i.text.clone(), i.key.clone()))
            .collect();
        let (accepted, newly_refused) = super::receive_items(app, source, items).await?;
        refused.extend(newly_refused);
        for updated in page.items.iter().filter_map(|i| i.updated.as_deref()) {
            if newest.as_deref().is_none_or(|c| later(updated, c)) {
                newest = Some(updated.to_string());
            }
        }
        state.accepted += accepted as u64;
        state.last_run_at = Some(app.clock.now());
        url = match page.next {
            Some(next) if next.starts_with("http://") || next.starts_with("https://") => {
                let next = reqwest::Url::parse(&next)
                    .map_err(|e| PollError::Failed(format!("the next page's URL: {e}")))?;
                // The token and headers go to the polled API only.
                if next.origin() != base.origin() {
                    return Err(PollError::Failed(format!(
                        "the next page is on another origin ({}); only {} is polled",
                        next.origin().ascii_serialization(),
                        base.origin().ascii_serialization()
                    )));
                }
                next
            }
            Some(cursor) => {
                let mut url = with_param(&base, &feed.cursor_param, since.as_deref());
                url.query_pairs_mut().append_pair(&feed.next_param, &cursor);
                url
            }
            None => break,
        };
    }
    // Every page is durable: the next poll asks from the newest time seen.
    state.cursor = newest;
    state.last_ok_at = state.last_run_at;
    state.last_error = None;
    state.failures = 0;
    // A poll that found nothing new writes nothing (in cluster mode every
    // write is a batch on the log), but for the run times every minute.
    let quiet = state.cursor == before.cursor
        && state.accepted == before.accepted
        && before.last_error.is_none()
        && before
            .last_run_at
            .zip(state.last_run_at)
            .is_some_and(|(b, n)| n.duration_since(b) < jiff::SignedDuration::from_mins(1));
    if !quiet {
        // Not for a source deleted meanwhile (its state went with it).
        if app
            .store
            .get_source(&source.tenant_id, &source.id)
            .map_err(ReceiveError::from)?
            .is_some()
        {
            app.store
                .put_poll_state(&source.id, &state)
                .await
                .map_err(ReceiveError::from)?;
        }
    }
    Ok(())
}

/// `url` with `name=value` set (replacing one of that name), or as it is
/// without a value.
fn with_param(url: &reqwest::Url, name: &str, value: Option<&str>) -> reqwest::Url {
    let Some(value) = value else {
        return url.clone();
    };
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut out = url.clone();
    out.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair(name, value);
    out
}

/// One item of a page: its JSON text, its event-id key, its updated time.
#[derive(Debug, PartialEq)]
struct Item {
    text: String,
    key: String,
    updated: Option<String>,
}

/// A page read: the items, and where the next is.
#[derive(Debug, PartialEq)]
struct Page {
    items: Vec<Item>,
    next: Option<String>,
}

fn text_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn read_page(answer: &Value, feed: &PollFeed) -> Result<Page, String> {
    let list = answer
        .pointer(&feed.items)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("the answer has no list at {:?}", feed.items))?;
    if list.len() > MAX_ITEMS_PER_PAGE {
        return Err(format!(
            "the page lists {} items, over the {MAX_ITEMS_PER_PAGE} a page may (ask the API for smaller pages)",
            list.len()
        ));
    }
    let mut items = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let id = text_of(item.get(&feed.id_field))
            .ok_or_else(|| format!("item {i} has no `{}`", feed.id_field))?;
        let updated = text_of(item.get(&feed.updated_field));
        let key = format!("{id}:{}", updated.as_deref().unwrap_or("-"));
        items.push(Item {
            text: item.to_string(),
            key,
            updated,
        });
    }
    let next = feed
        .next
        .as_deref()
        .and_then(|p| text_of(answer.pointer(p)));
    Ok(Page { items, next })
}

/// What the API shows of a poll source's progress.
pub fn state(app: &App, source: &Source) -> Option<PollState> {
    source.poll.as_ref()?;
    app.store.poll_state(&source.id).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn feed() -> PollFeed {
        serde_json::from_value(json!({"url": "https://api.example.com/c?w=1", "format": "ohallo-conversation", "next": "/next"}))
            .unwrap()
    }

    #[test]
    fn a_page_is_read_with_its_keys_and_next() {
        let page = read_page(
            &json!({"items": [{"id": 7, "updatedAt": "2026-12-01T10:00:00Z"}, {"id": "b"}], "next": "c2"}),
            &feed(),
        )
        .unwrap();
        assert_eq!(page.items[0].key, "7:2026-12-01T10:00:00Z");
        assert_eq!(page.items[1].key, "b:-");
        assert_eq!(page.next.as_deref(), Some("c2"));
        assert!(
            read_page(&json!({"items": [{"x": 1}]}), &feed())
                .unwrap_err()
                .contains("`id`")
        );
        assert!(
            read_page(&json!({"data": []}), &feed())
                .unwrap_err()
                .contains("/items")
        );
    }

    #[test]
    fn the_cursor_replaces_its_parameter() {
        let url = reqwest::Url::parse("https://a.example/c?w=1&updatedSince=old").unwrap();
        let with = with_param(&url, "updatedSince", Some("2026-12-01T10:00:00+00:00"));
        assert_eq!(
            with.as_str(),
            "https://a.example/c?w=1&updatedSince=2026-12-01T10%3A00%3A00%2B00%3A00"
        );
        assert_eq!(with_param(&url, "updatedSince", None), url);
    }

    #[test]
    fn settings_are_checked() {
        assert!(check(&feed()).is_ok());
        let mut f = feed();
        f.every_secs = 0;
        assert!(check(&f).unwrap_err().contains("every_secs"));
        let mut f = feed();
        f.url = "ftp://x".into();
        assert!(check(&f).is_err());
        let mut f = feed();
        f.format = "unknown".into();
        assert!(check(&f).is_err());
        let mut f = feed();
        f.items = "items".into();
        assert!(check(&f).is_err());
        let mut f = feed();
        f.cursor_param = "a&b".into();
        assert!(check(&f).is_err());
    }

    #[test]
    fn later_compares_instants_not_text() {
        assert!(later("2026-12-01T10:00:00Z", "2026-12-01T11:00:00+02:00"));
        assert!(!later("2026-12-01T11:00:00+02:00", "2026-12-01T10:00:00Z"));
        assert!(later("1000000000", "999999999"));
        assert!(later("b", "a"));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let every = Duration::from_secs(30);
        assert_eq!(backoff(every, 1), Duration::from_secs(60));
        assert_eq!(backoff(every, 3), Duration::from_secs(240));
        assert_eq!(backoff(every, 30), MAX_BACKOFF);
    }
}
