//! Small helpers shared by several stages.

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut
/// with `…` (log lines, recorded response bodies).
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A new id: `prefix_` + a ULID (time-ordered, so ids sort by creation).
pub fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        ulid::Ulid::new().to_string().to_ascii_lowercase()
    )
}

/// A new id whose time part is `now` (the engine's clock): ids of records
/// pruned by age (deliveries) must sort by the clock that ages them. Ids
/// made in the same millisecond sort in the order they were made (the
/// random part counts up from the first one's), so a listing by id (dead
/// letters, deliveries) keeps the order things happened in: two dead
/// letters of one millisecond used to list in a random order.
pub fn new_id_at(prefix: &str, now: jiff::Timestamp) -> String {
    const RANDOM_BITS: u128 = (1 << 80) - 1;
    // The last id's random part per recent millisecond (a slot per
    // `ms % 64`): callers holding slightly different `now`s interleave.
    static RECENT: std::sync::Mutex<[(u64, u128); 64]> = std::sync::Mutex::new([(0, 0); 64]);
    let ms = now.as_millisecond().max(0) as u64;
    let random = {
        let mut recent = RECENT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slot = &mut recent[(ms % 64) as usize];
        let random = match *slot {
            (at, previous) if at == ms && previous < RANDOM_BITS => previous + 1,
            _ => rand::random::<u128>() & RANDOM_BITS,
        };
        *slot = (ms, random);
        random
    };
    format!(
        "{prefix}_{}",
        ulid::Ulid::from_parts(ms, random)
            .to_string()
            .to_ascii_lowercase()
    )
}

/// Crash-test hook: whether `WASMHOOK_FAILPOINT` names this point.
pub fn failpoint_active(name: &str) -> bool {
    std::env::var("WASMHOOK_FAILPOINT").is_ok_and(|v| v == name)
}

/// Crash-test hook: `WASMHOOK_FAILPOINT=<name>` aborts the process here.
pub fn failpoint(name: &str) {
    if failpoint_active(name) {
        eprintln!("wasmhook: failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Installs rustls's ring provider as the process's default, which every
/// reqwest client of this process then uses. reqwest is built without a
/// provider of its own (see host/Cargo.toml), so this must run before the
/// first client is built; it is idempotent and cheap, so each place that
/// builds a client calls it.
pub fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only when a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h…");
        assert_eq!(truncate("héllo", 3), "hé…");
        assert_eq!(truncate("short", 10), "short");
    }

    #[test]
    fn ids_sort_by_creation() {
        let a = new_id("dlv");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id("dlv");
        assert!(a.starts_with("dlv_") && a.len() == 30);
        assert!(a < b);
    }

    #[test]
    fn ids_at_a_time_carry_that_time() {
        let t: jiff::Timestamp = "2026-11-21T10:00:00Z".parse().unwrap();
        let id = new_id_at("dlv", t);
        let ulid = ulid::Ulid::from_string(&id["dlv_".len()..].to_ascii_uppercase()).unwrap();
        assert_eq!(ulid.timestamp_ms() as i64, t.as_millisecond());
        assert!(new_id_at("dlv", t) < new_id_at("dlv", t + jiff::SignedDuration::from_millis(1)));
    }

    #[test]
    fn ids_of_one_millisecond_sort_in_the_order_they_were_made() {
        // A millisecond no other test's clock uses (they keep whole seconds).
        let t: jiff::Timestamp = "2026-11-21T10:00:00.503Z".parse().unwrap();
        let ids: Vec<String> = (0..1000).map(|_| new_id_at("dlq", t)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }
}
