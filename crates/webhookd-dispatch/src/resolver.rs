//! DNS that drops the addresses the network policy refuses, so that a name that changed its address since the
//! webhook was saved still cannot reach an internal service (checked at connect time).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use webhookd_core::NetworkPolicy;

pub(crate) struct GuardedResolver {
    policy: Arc<NetworkPolicy>,
    timeout: Duration,
}

impl GuardedResolver {
    /// A resolver that gives up after `timeout`.
    pub(crate) fn new(policy: Arc<NetworkPolicy>, timeout: Duration) -> Self {
        Self { policy, timeout }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (policy, timeout) = (self.policy.clone(), self.timeout);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                match tokio::time::timeout(timeout, tokio::net::lookup_host((host.as_str(), 0)))
                    .await
                {
                    Ok(found) => found?.collect(),
                    Err(_) => {
                        return Err(format!(
                            "DNS lookup of {host} timed out after {} ms",
                            timeout.as_millis()
                        )
                        .into())
                    }
                };
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.check(a.ip()) {
                    Ok(()) => true,
                    Err(r) => {
                        refused = Some(r);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(r)) => Err(format!("{host} resolves to {r}").into()),
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}
