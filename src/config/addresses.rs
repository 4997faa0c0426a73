//! Address lists in configuration: `allow_addresses` / `deny_addresses` (CIDR blocks or bare
//! addresses, IPv4 and IPv6). Deny wins; an empty allow list allows everyone.

use crate::config::hba::canonical;
use ipnet::IpNet;
use serde::Deserialize;
use std::net::IpAddr;

/// A CIDR block; a bare address means just that address (/32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr(pub IpNet);

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if let Ok(n) = s.parse::<IpNet>() {
            return Ok(Cidr(n));
        }
        s.parse::<IpAddr>()
            .map(|a| Cidr(IpNet::from(a)))
            .map_err(|_| format!("invalid address {s:?}: expected a CIDR block (10.0.0.0/8, fd00::/8) or an IP address"))
    }
}

/// True when `addr` is in one of `nets`.
pub fn listed(nets: &[Cidr], addr: IpAddr) -> bool {
    let a = canonical(addr);
    nets.iter().any(|n| n.0.contains(&a))
}

/// Whether `addr` passes an allow and a deny list (unix sockets, None, always pass).
pub fn permitted(allow: &[Cidr], deny: &[Cidr], addr: Option<IpAddr>) -> bool {
    let Some(a) = addr else { return true };
    !listed(deny, a) && (allow.is_empty() || listed(allow, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<Cidr> {
        v.iter()
            .map(|s| Cidr::try_from(s.to_string()).unwrap())
            .collect()
    }

    #[test]
    fn deny_wins_and_empty_allow_allows() {
        let allow = nets(&["10.0.0.0/8", "::1"]);
        let deny = nets(&["10.9.0.0/16"]);
        let ok = |a: &str| permitted(&allow, &deny, Some(a.parse().unwrap()));
        assert!(ok("10.1.1.1"));
        assert!(!ok("10.9.1.1"));
        assert!(ok("::1"));
        assert!(!ok("::2"));
        assert!(!ok("192.168.1.1"));
        assert!(
            ok("::ffff:10.1.1.1"),
            "IPv4-mapped addresses match IPv4 blocks"
        );
        assert!(permitted(&[], &[], Some("1.2.3.4".parse().unwrap())));
        assert!(permitted(&allow, &deny, None), "unix sockets");
        assert!(Cidr::try_from("10.0.0.0/33".to_string()).is_err());
        assert!(Cidr::try_from("nope".to_string()).is_err());
    }
}
