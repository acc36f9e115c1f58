//! Per-caller limits and request hygiene, as middleware: content type, per-uid rate and
//! concurrency.
//!
//! The rate limit is a keyed GCRA limiter from `governor` (a well-kept crate made for exactly
//! this); concurrency is a count per uid held until the response body is finished, so a long
//! stream counts for as long as it runs.

use super::error::ApiError;
use super::Caller;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

/// How many of something (running requests, open connections) each uid holds, up to a bound.
pub struct UidCounter {
    max: usize,
    held: Mutex<HashMap<u32, usize>>,
}

/// One of a uid's counted things; given back on drop.
pub struct Counted {
    counter: Arc<UidCounter>,
    uid: u32,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut held = self.counter.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.uid);
            }
        }
    }
}

impl UidCounter {
    /// At most `max` per uid.
    pub fn new(max: usize) -> Arc<UidCounter> {
        Arc::new(UidCounter {
            max,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// The bound per uid.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Counts `k` more for `uid` at once, or none of them (`None`) when that would pass the
    /// bound.
    pub fn acquire_many(self: &Arc<Self>, uid: u32, k: usize) -> Option<Vec<Counted>> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(uid).or_insert(0);
        if *n + k > self.max {
            if *n == 0 {
                held.remove(&uid);
            }
            return None;
        }
        *n += k;
        Some(
            (0..k)
                .map(|_| Counted {
                    counter: self.clone(),
                    uid,
                })
                .collect(),
        )
    }

    /// Counts one more for `uid`, or `None` when it already holds the bound.
    pub fn acquire(self: &Arc<Self>, uid: u32) -> Option<Counted> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(uid).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Counted {
            counter: self.clone(),
            uid,
        })
    }
}

/// Per-uid rate and concurrency limits.
pub struct UidLimits {
    rate: DefaultKeyedRateLimiter<u32>,
    running: Arc<UidCounter>,
}

impl UidLimits {
    /// `per_minute` requests per minute (as a steady rate, with that many as the burst) and
    /// `max_concurrent` at once, per uid.
    pub fn new(per_minute: u32, max_concurrent: u32) -> Arc<UidLimits> {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        Arc::new(UidLimits {
            rate: RateLimiter::keyed(Quota::per_minute(per_minute)),
            running: UidCounter::new(max_concurrent.max(1) as usize),
        })
    }

    fn acquire(&self, uid: u32) -> Option<Counted> {
        self.running.acquire(uid)
    }

    /// The further concurrency a request with `n` choices needs beyond the one its call holds
    /// (each choice decodes in its own slot, for up to `max_tokens`), or a 429 saying so.
    pub fn choices(&self, uid: u32, n: u32) -> Result<Vec<Counted>, ApiError> {
        let extra = n.saturating_sub(1) as usize;
        if extra == 0 {
            return Ok(Vec::new());
        }
        self.running.acquire_many(uid, extra).ok_or_else(|| {
            ApiError::rate_limited(format!(
                "n = {n} choices count {n} against uid {uid}'s {} concurrent generations; \
                 ask for fewer or retry when others finish",
                self.running.max()
            ))
        })
    }
}

fn too_many(message: String, retry_after_secs: u64) -> Response {
    let mut resp = ApiError::rate_limited(message).into_response();
    if let Ok(v) = HeaderValue::from_str(&retry_after_secs.max(1).to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// Middleware for the expensive routes: refuses a uid over its rate or concurrency with 429
/// and `Retry-After`.
pub async fn per_uid(
    State(limits): State<Arc<UidLimits>>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    request: Request,
    next: Next,
) -> Response {
    if let Err(not_until) = limits.rate.check_key(&caller.uid) {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        return too_many(
            format!("uid {} is over its request rate; retry later", caller.uid),
            wait.as_secs_f64().ceil() as u64,
        );
    }
    let Some(slot) = limits.acquire(caller.uid) else {
        return too_many(
            format!(
                "uid {} already has {} requests running; retry when one finishes",
                caller.uid,
                limits.running.max()
            ),
            1,
        );
    };
    let response = next.run(request).await;
    // Keep the slot until the body (a stream, possibly) is finished or dropped.
    let (parts, body) = response.into_parts();
    let body = Body::from_stream(body.into_data_stream().map(move |chunk| {
        let _held = &slot;
        chunk
    }));
    Response::from_parts(parts, body)
}

/// Middleware: a body sent to the API must be JSON. A missing `Content-Type` is accepted (many
/// simple clients omit it); anything else gets 415.
pub async fn json_only(request: Request, next: Next) -> Result<Response, ApiError> {
    if request.method() == Method::POST || request.method() == Method::PUT {
        if let Some(ct) = request.headers().get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
            let essence = ct.split(';').next().unwrap_or("").trim();
            if essence != "application/json" {
                return Err(ApiError::unsupported_media_type(essence));
            }
        }
    }
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_slots_are_per_uid_and_released() {
        let l = UidLimits::new(1000, 2);
        let a = l.acquire(1).unwrap();
        let _b = l.acquire(1).unwrap();
        assert!(l.acquire(1).is_none());
        assert!(l.acquire(2).is_some(), "another uid is not affected");
        drop(a);
        assert!(l.acquire(1).is_some());
    }
}
