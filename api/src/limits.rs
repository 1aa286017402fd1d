//! Rate limits: per storefront key, per customer, and per peer address for requests without a
//! key the API knows (GCRA, via `governor`). Over the limit, a request gets 429 `rate_limited`
//! with `Retry-After`. Idempotent replays are not counted.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::problem::Problem;

/// Requests per second allowed; bursts of five seconds' worth are absorbed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Per storefront key.
    pub storefront_per_second: u32,
    /// Per customer (of a storefront).
    pub customer_per_second: u32,
    /// Per peer address, for requests with a missing or unknown key.
    pub unauthenticated_per_second: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            storefront_per_second: 5_000,
            customer_per_second: 20,
            unauthenticated_per_second: 20,
        }
    }
}

/// The limiters.
pub struct Limits {
    storefront: DefaultKeyedRateLimiter<String>,
    customer: DefaultKeyedRateLimiter<(String, String)>,
    unauthenticated: DefaultKeyedRateLimiter<std::net::IpAddr>,
    clock: DefaultClock,
}

fn quota(per_second: u32) -> Quota {
    let rate = NonZeroU32::new(per_second.max(1)).expect("at least 1");
    let burst = NonZeroU32::new(per_second.max(1).saturating_mul(5)).expect("at least 1");
    Quota::per_second(rate).allow_burst(burst)
}

impl Limits {
    /// Limiters for `limits`.
    pub fn new(limits: RateLimits) -> Self {
        Self {
            storefront: DefaultKeyedRateLimiter::keyed(quota(limits.storefront_per_second)),
            customer: DefaultKeyedRateLimiter::keyed(quota(limits.customer_per_second)),
            unauthenticated: DefaultKeyedRateLimiter::keyed(quota(
                limits.unauthenticated_per_second,
            )),
            clock: DefaultClock::default(),
        }
    }

    /// Counts a request by `storefront`.
    pub fn storefront(&self, storefront: &str) -> Result<(), Problem> {
        self.storefront
            .check_key(&storefront.to_owned())
            .map_err(|n| self.limited(n.wait_time_from(self.clock.now())))
    }

    /// Counts a request for `customer` of `storefront`.
    pub fn customer(&self, storefront: &str, customer: &str) -> Result<(), Problem> {
        let key = (storefront.to_owned(), customer.to_owned());
        self.customer
            .check_key(&key)
            .map_err(|n| self.limited(n.wait_time_from(self.clock.now())))
    }

    /// Counts a request from `peer` that carries no key the API knows.
    pub fn unauthenticated(&self, peer: std::net::IpAddr) -> Result<(), Problem> {
        self.unauthenticated
            .check_key(&peer)
            .map_err(|n| self.limited(n.wait_time_from(self.clock.now())))
    }

    /// Forgets keys that are back to a full allowance (bounds the memory).
    pub fn forget_idle(&self) {
        self.storefront.retain_recent();
        self.customer.retain_recent();
        self.unauthenticated.retain_recent();
    }

    fn limited(&self, wait: std::time::Duration) -> Problem {
        Problem::rate_limited(wait.as_secs_f64().ceil().max(1.0) as u32)
    }
}
