//! Limits for the routes without a token (connecting through OAuth, the
//! webhook callback), counted per client address: the peer, or, when the
//! peer is one of `TRUSTED_PROXIES`, the nearest address in
//! `X-Forwarded-For` that no trusted proxy stands for. IPv6 clients are
//! counted per /64, the block one subscriber usually holds.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};

use actix_web::HttpRequest;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;

use super::error::ApiError;
use crate::config::Settings;

/// Requests between two sweeps of addresses whose limit has fully
/// recovered, so a flood from many addresses cannot grow the limiter.
const SWEEP_EVERY: u32 = 1024;

/// Which limit a route counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /auth/strava` and its callback.
    Connect,
    /// The webhook callback.
    Webhook,
}

/// The per-address limits, and who may name the client for the peer.
pub struct AddressLimits {
    trusted: Vec<IpNet>,
    connect: Option<Limiter>,
    webhook: Option<Limiter>,
}

impl AddressLimits {
    /// `CONNECT_RATE_LIMIT` per minute (bursts as large) and
    /// `WEBHOOK_RATE_LIMIT` per second (bursts five times that); 0 is off.
    pub fn new(settings: &Settings) -> Self {
        let connect = NonZeroU32::new(settings.connect_rate_limit)
            .map(|n| Limiter::new(Quota::per_minute(n).allow_burst(n)));
        let webhook = NonZeroU32::new(settings.webhook_rate_limit).map(|n| {
            let burst = NonZeroU32::new(n.get().saturating_mul(5)).unwrap_or(n);
            Limiter::new(Quota::per_second(n).allow_burst(burst))
        });
        Self {
            trusted: settings.trusted_proxies.clone(),
            connect,
            webhook,
        }
    }

    /// 429 with `Retry-After` once the client spent its limit for `route`.
    pub fn check(&self, req: &HttpRequest, route: Route) -> Result<(), ApiError> {
        let limiter = match route {
            Route::Connect => &self.connect,
            Route::Webhook => &self.webhook,
        };
        let (Some(limiter), Some(client)) = (limiter, client_address(req, &self.trusted)) else {
            return Ok(());
        };
        limiter.check(bucket(client))
    }
}

struct Limiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    since_sweep: AtomicU32,
}

impl Limiter {
    fn new(quota: Quota) -> Self {
        Self {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            since_sweep: AtomicU32::new(0),
        }
    }

    fn check(&self, key: IpAddr) -> Result<(), ApiError> {
        if self.since_sweep.fetch_add(1, Ordering::Relaxed) >= SWEEP_EVERY {
            self.since_sweep.store(0, Ordering::Relaxed);
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::TooManyRequests {
                resource: "Client",
                retry_after_secs: wait.as_secs() + 1,
            }
        })
    }
}

/// The address a request comes from: the peer, unless it is a trusted proxy;
/// then `X-Forwarded-For` read from the nearest hop back, up to the first
/// address that is not a trusted proxy (what a client writes further left
/// is not believed).
pub fn client_address(req: &HttpRequest, trusted: &[IpNet]) -> Option<IpAddr> {
    let is_trusted = |addr: &IpAddr| trusted.iter().any(|net| net.contains(addr));
    let mut client = req.peer_addr()?.ip();
    let forwarded: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in forwarded.iter().rev() {
        if !is_trusted(&client) {
            break;
        }
        match parse_hop(hop) {
            Some(addr) => client = addr,
            None => break,
        }
    }
    Some(client)
}

/// One `X-Forwarded-For` entry: an address, possibly with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// The key an address is counted under: IPv4 as is, IPv6 by its /64.
fn bucket(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;
    use proptest::prelude::*;

    fn request(peer: &str, forwarded: &[&str]) -> HttpRequest {
        let mut req = TestRequest::default().peer_addr(peer.parse().unwrap());
        for value in forwarded {
            req = req.append_header(("X-Forwarded-For", *value));
        }
        req.to_http_request()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = nets(&["10.0.0.0/8"]);
        let client = |peer, fwd: &[&str]| client_address(&request(peer, fwd), &trusted).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            client("203.0.113.9:1", &["198.51.100.1"]),
            ip("203.0.113.9")
        );
        assert_eq!(client("10.0.0.2:1", &["198.51.100.1"]), ip("198.51.100.1"));
        // A client's own entry, left of what the proxies wrote, is not believed.
        assert_eq!(
            client("10.0.0.2:1", &["1.2.3.4, 198.51.100.1, 10.0.0.3"]),
            ip("198.51.100.1")
        );
        assert_eq!(
            client("10.0.0.2:1", &["1.2.3.4", "198.51.100.1:4711"]),
            ip("198.51.100.1")
        );
        assert_eq!(client("10.0.0.2:1", &["garbage"]), ip("10.0.0.2"));
        assert_eq!(client("10.0.0.2:1", &[]), ip("10.0.0.2"));
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let a = bucket("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = bucket("2001:db8:1:2:bbbb::2".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, bucket("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(
            bucket("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn the_client_is_the_peer_or_an_address_the_header_lists(
            hops in prop::collection::vec(
                prop_oneof![
                    any::<std::net::Ipv4Addr>().prop_map(|a| a.to_string()),
                    any::<Ipv6Addr>().prop_map(|a| format!("[{a}]:443")),
                    (10u8..11, any::<u8>()).prop_map(|(a, b)| format!("{a}.0.0.{b}")),
                    "[ -~]{0,16}",
                ],
                0..5,
            ),
            behind_proxy in any::<bool>(),
        ) {
            let peer = if behind_proxy { "10.0.0.2:1" } else { "203.0.113.9:1" };
            let header = hops.join(",");
            let req = request(peer, &[&header]);
            let client = client_address(&req, &nets(&["10.0.0.0/8"])).unwrap();
            let peer_ip = peer.parse::<SocketAddr>().unwrap().ip();
            let listed = header.split(',').any(|h| parse_hop(h.trim()) == Some(client));
            prop_assert!(client == peer_ip || (behind_proxy && listed), "{client} from {header}");
            let _ = bucket(client);
        }
    }
}
