//! The node's addresses, for the kernel's `HOST_ADDRS` map: hostNetwork pods and
//! node processes share them, so the programs keep their client ports (and
//! with them each socket's cgroup) instead of aggregating them.
use std::collections::BTreeSet;
use std::net::IpAddr;

use flowpol_common::{EndpointKey, FAMILY_IPV4, FAMILY_IPV6};

/// The addresses of the interfaces of the calling thread's network namespace
/// (`getifaddrs`); empty when the call fails (aggregation then only spares
/// loopback and the addresses identity knows).
pub fn own_addresses() -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below with freeifaddrs;
    // each entry's `ifa_addr` is null or points at a sockaddr of its family.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut at = head;
        while !at.is_null() {
            let addr = (*at).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(addr as *const libc::sockaddr_in);
                        out.insert(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(addr as *const libc::sockaddr_in6);
                        out.insert(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            at = (*at).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

/// The kernel key of an address (port 0), as the programs build it from a packet.
pub fn host_key(ip: IpAddr) -> EndpointKey {
    let mut key = EndpointKey::default();
    match ip {
        IpAddr::V4(v4) => {
            key.addr[..4].copy_from_slice(&v4.octets());
            key.family = FAMILY_IPV4;
        }
        IpAddr::V6(v6) => {
            key.addr = v6.octets();
            key.family = FAMILY_IPV6;
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hold_the_address_as_the_programs_read_it() {
        let k = host_key("10.244.0.7".parse().unwrap());
        assert_eq!(&k.addr[..4], &[10, 244, 0, 7]);
        assert!(k.addr[4..].iter().all(|b| *b == 0));
        assert_eq!((k.port, k.family), (0, FAMILY_IPV4));
        let k = host_key("fd00::1".parse().unwrap());
        assert_eq!(k.addr[0], 0xfd);
        assert_eq!(k.addr[15], 1);
        assert_eq!(k.family, FAMILY_IPV6);
    }

    #[test]
    fn own_addresses_include_loopback() {
        // Every network namespace has `lo` with 127.0.0.1 (up or down).
        assert!(own_addresses().contains(&"127.0.0.1".parse::<IpAddr>().unwrap()));
    }
}
