//! Client-side load balancing without a proxy: a target naming several
//! servers (`a:50051,b:50051`) or a DNS name with several addresses
//! (`dns:///vow-headless.vow.svc:50051`, a Kubernetes headless Service)
//! becomes one tonic channel that spreads calls over them (tower's
//! power-of-two-choices balancer). DNS names are looked up again every
//! [`DNS_REFRESH`], so replicas that come and go are followed.

use std::{collections::HashSet, net::SocketAddr, time::Duration};

use tokio::sync::mpsc::Sender;
use tonic::transport::{Channel, Endpoint, channel::Change};

use crate::{ConnectOptions, Error};

/// How often a `dns:///` target's addresses are looked up again.
pub const DNS_REFRESH: Duration = Duration::from_secs(15);

/// What a target string names.
pub(crate) enum Target {
    /// One server: `host:port` or a URL.
    One(String),
    /// A fixed list, comma-separated.
    List(Vec<String>),
    /// Every address of a DNS name, followed as it changes.
    Dns { host: String, port: u16 },
}

impl Target {
    pub(crate) fn parse(target: &str) -> Result<Self, Error> {
        if let Some(name) = target.strip_prefix("dns:///") {
            let (host, port) = name
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
                .filter(|(host, _)| !host.is_empty())
                .ok_or_else(|| invalid(target, "a dns:/// target is dns:///host:port"))?;
            return Ok(Self::Dns {
                host: host.to_owned(),
                port,
            });
        }
        if target.contains(',') {
            let endpoints: Vec<String> = target
                .split(',')
                .map(str::trim)
                .filter(|endpoint| !endpoint.is_empty())
                .map(str::to_owned)
                .collect();
            if endpoints.is_empty() {
                return Err(invalid(target, "the list names no server"));
            }
            return Ok(Self::List(endpoints));
        }
        Ok(Self::One(target.to_owned()))
    }
}

/// A channel over every server of a list; connections are made on first use
/// and remade when they break.
pub(crate) fn list_channel(
    options: &ConnectOptions,
    endpoints: &[String],
) -> Result<Channel, Error> {
    let endpoints = endpoints
        .iter()
        .map(|endpoint| options.endpoint(endpoint))
        .collect::<Result<Vec<Endpoint>, Error>>()?;
    Ok(Channel::balance_list(endpoints.into_iter()))
}

/// A channel over every address `host` resolves to. With `eager`, the
/// first lookup must find one (else [`Error::Unreachable`]); otherwise calls
/// wait for it. Later lookups add and remove servers, and a failed one
/// keeps those known.
pub(crate) async fn dns_channel(
    options: &ConnectOptions,
    host: &str,
    port: u16,
    eager: bool,
) -> Result<Channel, Error> {
    let target = format!("dns:///{host}:{port}");
    // Certificates name the service, not each pod's address.
    let options = if options.uses_tls(host) && !options.has_domain_name() {
        options.clone().domain_name(host)
    } else {
        options.clone()
    };
    let (channel, changes) = Channel::balance_channel(64);
    let mut known = HashSet::new();
    if eager {
        let addresses = lookup(host, port)
            .await
            .map_err(|reason| Error::Unreachable {
                endpoint: target.clone(),
                reason,
            })?;
        apply(&options, &changes, &mut known, addresses).await?;
    }
    let host = host.to_owned();
    tokio::spawn(async move {
        let mut wait = if eager { DNS_REFRESH } else { Duration::ZERO };
        loop {
            tokio::time::sleep(wait).await;
            wait = DNS_REFRESH;
            if changes.is_closed() {
                return;
            }
            match lookup(&host, port).await {
                Ok(addresses) => {
                    if apply(&options, &changes, &mut known, addresses)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(reason) => {
                    tracing::warn!(%target, %reason, "DNS lookup failed; keeping the known servers");
                }
            }
        }
    });
    Ok(channel)
}

/// Tells the balancer which addresses appeared and which went away.
async fn apply(
    options: &ConnectOptions,
    changes: &Sender<Change<SocketAddr, Endpoint>>,
    known: &mut HashSet<SocketAddr>,
    addresses: HashSet<SocketAddr>,
) -> Result<(), Error> {
    let gone: Vec<SocketAddr> = known.difference(&addresses).copied().collect();
    for address in gone {
        known.remove(&address);
        let _ = changes.send(Change::Remove(address)).await;
    }
    for address in addresses {
        if known.insert(address) {
            let endpoint = options.endpoint(&address.to_string())?;
            if changes
                .send(Change::Insert(address, endpoint))
                .await
                .is_err()
            {
                return Err(Error::Unreachable {
                    endpoint: address.to_string(),
                    reason: "the channel was dropped".into(),
                });
            }
        }
    }
    Ok(())
}

async fn lookup(host: &str, port: u16) -> Result<HashSet<SocketAddr>, String> {
    let addresses: HashSet<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|error| format!("cannot resolve {host}: {error}"))?
        .collect();
    if addresses.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    Ok(addresses)
}

fn invalid(target: &str, reason: &str) -> Error {
    Error::InvalidEndpoint {
        endpoint: target.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert!(matches!(
            Target::parse("127.0.0.1:1").unwrap(),
            Target::One(_)
        ));
        let Target::List(list) = Target::parse("a:1, b:2,").unwrap() else {
            panic!("a list")
        };
        assert_eq!(list, ["a:1", "b:2"]);
        let Target::Dns { host, port } = Target::parse("dns:///vow.svc:50051").unwrap() else {
            panic!("a DNS target")
        };
        assert_eq!((host.as_str(), port), ("vow.svc", 50051));
        for bad in ["dns:///vow.svc", "dns:///:1", "dns:///vow:port", ",", " , "] {
            assert!(Target::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
