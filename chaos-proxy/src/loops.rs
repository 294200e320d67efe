//! Proxy loops: a proxy whose upstream is its own listen address, or a cycle
//! through other proxies of this process (A → B → A), turns one client
//! connection into connections without end. The control plane refuses such
//! a configuration (this module); the data plane refuses a connection that
//! has passed through too many of this process's proxies (`proxy.rs`), for
//! loops no configuration check can see (DNS changes, a port 0 that
//! happened to land on someone's upstream).

use std::net::{IpAddr, SocketAddr};

/// One proxy as the loop check sees it.
pub(crate) struct Node<'a> {
    pub name: &'a str,
    /// Where it listens (or would): a port 0 is no address yet.
    pub listen: SocketAddr,
    /// Every address its upstream resolved to.
    pub upstreams: &'a [SocketAddr],
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// An address that a connection to reaches this host's loopback.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified()
}

/// Whether a connection to `upstream` can land on a socket listening on
/// `listen`: the same port, and the same address, or a wildcard on one side
/// and a loopback or wildcard address on the other (connecting to 0.0.0.0
/// reaches the loopback; a 0.0.0.0 listener accepts 127.0.0.1, a `[::]` one
/// IPv4 as well). `localhost` and the other aliases are 127.0.0.1 by now.
pub(crate) fn reaches(upstream: SocketAddr, listen: SocketAddr) -> bool {
    if listen.port() == 0 || upstream.port() != listen.port() {
        return false;
    }
    let (up, at) = (canonical(upstream.ip()), canonical(listen.ip()));
    if up == at {
        return true;
    }
    let same_family = up.is_ipv4() == at.is_ipv4();
    let dual_stack = matches!(at, IpAddr::V6(v6) if v6.is_unspecified());
    let family_ok = same_family || dual_stack;
    family_ok && ((at.is_unspecified() && is_local(up)) || (up.is_unspecified() && is_local(at)))
}

/// For each node, the nodes its upstream reaches: computed once per check,
/// so that searching from every changed proxy stays linear per search.
pub(crate) fn edges(nodes: &[Node<'_>]) -> Vec<Vec<usize>> {
    let reached = |from: &Node<'_>, to: &Node<'_>| from.upstreams.iter().any(|u| reaches(*u, to.listen));
    nodes
        .iter()
        .map(|from| (0..nodes.len()).filter(|&j| reached(from, &nodes[j])).collect())
        .collect()
}

/// A loop through `nodes[start]`, as the names along it (`a -> b -> a`), or
/// `None`. A depth-first search over [`edges`]; the graph has at most one
/// node per proxy.
pub(crate) fn find_loop(nodes: &[Node<'_>], edges: &[Vec<usize>], start: usize) -> Option<String> {
    let mut seen = vec![false; nodes.len()];
    // Each frame: a node on the current path and the targets left to try.
    let mut path: Vec<(usize, Vec<usize>)> = vec![(start, edges[start].clone())];
    seen[start] = true;
    while let Some((_, targets)) = path.last_mut() {
        let Some(j) = targets.pop() else {
            path.pop();
            continue;
        };
        if j == start {
            let mut names: Vec<&str> = path.iter().map(|(i, _)| nodes[*i].name).collect();
            names.push(nodes[start].name);
            return Some(names.join(" -> "));
        }
        if !seen[j] {
            seen[j] = true;
            path.push((j, edges[j].clone()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn equivalent_addresses_reach_each_other() {
        for (up, listen) in [
            ("127.0.0.1:80", "127.0.0.1:80"),
            ("127.0.0.1:80", "0.0.0.0:80"),
            ("0.0.0.0:80", "127.0.0.1:80"),
            ("127.0.0.1:80", "[::]:80"),
            ("[::1]:80", "[::]:80"),
            ("[::ffff:127.0.0.1]:80", "127.0.0.1:80"),
            ("10.1.2.3:80", "10.1.2.3:80"),
        ] {
            assert!(reaches(addr(up), addr(listen)), "{up} -> {listen}");
        }
        for (up, listen) in [
            ("127.0.0.1:80", "127.0.0.1:81"),
            ("127.0.0.2:80", "127.0.0.1:80"),
            ("[::1]:80", "0.0.0.0:80"),
            ("10.1.2.3:80", "127.0.0.1:80"),
            ("127.0.0.1:0", "127.0.0.1:0"),
        ] {
            assert!(!reaches(addr(up), addr(listen)), "{up} -> {listen}");
        }
    }

    #[test]
    fn finds_self_loops_and_cycles_but_not_chains() {
        let ups = [
            [addr("127.0.0.1:2")],
            [addr("127.0.0.1:3")],
            [addr("127.0.0.1:1")],
            [addr("127.0.0.1:9")],
        ];
        let node = |name, listen: &str, u| Node {
            name,
            listen: addr(listen),
            upstreams: u,
        };
        let cycle = [
            node("a", "127.0.0.1:1", &ups[0]),
            node("b", "127.0.0.1:2", &ups[1]),
            node("c", "0.0.0.0:3", &ups[2]),
            node("d", "127.0.0.1:4", &ups[3]),
        ];
        let search = |nodes: &[Node<'_>], start| find_loop(nodes, &edges(nodes), start);
        assert_eq!(search(&cycle, 0).as_deref(), Some("a -> b -> c -> a"));
        assert_eq!(search(&cycle, 3), None);
        let selfish = [node("s", "127.0.0.1:9", &ups[3])];
        assert_eq!(search(&selfish, 0).as_deref(), Some("s -> s"));
        let chain = [node("a", "127.0.0.1:1", &ups[0]), node("b", "127.0.0.1:2", &ups[3])];
        assert_eq!(search(&chain, 0), None);
    }
}
