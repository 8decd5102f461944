//! The request cache behind the streaming URLs: each Exec, Attach or PortForward request is kept
//! under a random token for a short time, and the first connection presenting the token takes it.
//! A token is the only credential a streaming URL carries, so this module must never hand one out
//! twice, hand out a guessable one, or honour one past its deadline.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

use super::server::{AttachRequest, ExecRequest, PortForwardRequest};
use crate::error::{Error, ErrorKind, Result};

/// Random bytes in a token (256 bits).
const TOKEN_BYTES: usize = 32;

/// A request waiting for its client to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CachedRequest {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

/// Single-use, expiring tokens for cached requests.
pub(crate) struct RequestCache {
    ttl: Duration,
    max_in_flight: usize,
    entries: Mutex<HashMap<String, (Instant, CachedRequest)>>,
}

impl RequestCache {
    pub(crate) fn new(ttl: Duration, max_in_flight: usize) -> Self {
        RequestCache { ttl, max_in_flight, entries: Mutex::new(HashMap::new()) }
    }

    /// Stores `req` and returns its token (URL-safe base64).
    pub(crate) fn insert(&self, req: CachedRequest) -> Result<String> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        entries.retain(|_, (deadline, _)| *deadline > now);
        if entries.len() >= self.max_in_flight {
            return Err(Error::new(
                ErrorKind::ResourceExhausted,
                format!(
                    "too many streaming requests waiting for their client (limit {})",
                    self.max_in_flight
                ),
            ));
        }
        loop {
            let mut raw = [0u8; TOKEN_BYTES];
            getrandom::fill(&mut raw)
                .map_err(|e| Error::internal(format!("generating a streaming token: {e}")))?;
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
            // A collision at 256 bits means the random source is broken; don't reuse the token.
            if !entries.contains_key(&token) {
                entries.insert(token.clone(), (now + self.ttl, req));
                return Ok(token);
            }
        }
    }

    /// Takes the request stored under `token`, if it is there and not expired.
    pub(crate) fn consume(&self, token: &str) -> Option<CachedRequest> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (deadline, req) = entries.remove(token)?;
        (deadline > Instant::now()).then_some(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf() -> CachedRequest {
        CachedRequest::PortForward(PortForwardRequest { pod_sandbox_id: "p".into(), ports: vec![] })
    }

    #[test]
    fn tokens_are_long_url_safe_and_single_use() {
        let cache = RequestCache::new(Duration::from_secs(60), 10);
        let a = cache.insert(pf()).unwrap();
        let b = cache.insert(pf()).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{a}");
        assert_eq!(cache.consume(&a), Some(pf()));
        assert_eq!(cache.consume(&a), None);
        assert_eq!(cache.consume("nope"), None);
        assert!(cache.consume(&b).is_some());
    }

    #[test]
    fn tokens_expire_and_the_cache_is_bounded() {
        let cache = RequestCache::new(Duration::from_millis(30), 2);
        let a = cache.insert(pf()).unwrap();
        cache.insert(pf()).unwrap();
        let full = cache.insert(pf()).unwrap_err();
        assert_eq!(full.kind(), ErrorKind::ResourceExhausted);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(cache.consume(&a), None);
        // Expired entries no longer count against the limit.
        cache.insert(pf()).unwrap();
    }
}
