//! A node's place on the network: the peer API's listener (with its send buffer) and the address peers are told
//! to reach it at.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};

use crate::P2pError;

/// Bounds of a peer send buffer: below a few KiB the kernel raises it anyway, above 1G it is no bound.
pub const MIN_SEND_BUFFER: u64 = 4 << 10;
pub const MAX_SEND_BUFFER: u64 = 1 << 30;

/// A peer send buffer within [`MIN_SEND_BUFFER`]..=[`MAX_SEND_BUFFER`].
pub fn check_send_buffer(size: u64) -> Result<(), P2pError> {
    if (MIN_SEND_BUFFER..=MAX_SEND_BUFFER).contains(&size) {
        Ok(())
    } else {
        Err(P2pError::Config(format!(
            "peer send buffer {size}: must be between 4K and 1G"
        )))
    }
}

fn listen_err(addr: SocketAddr) -> impl Fn(std::io::Error) -> P2pError {
    move |source| P2pError::Listen { addr, source }
}

/// The peer API's listener. Connections accepted from it inherit its send buffer: set before `listen`, a size fixed
/// by hand also turns off the kernel's send-buffer autotuning for them.
pub fn peer_listener(addr: SocketAddr, send_buffer: Option<u64>) -> Result<tokio::net::TcpListener, P2pError> {
    let err = listen_err(addr);
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(&err)?;
    // As `TcpListener::bind` does: a restarted node gets its port back at once.
    sock.set_reuseaddr(true).map_err(&err)?;
    if let Some(size) = send_buffer {
        check_send_buffer(size)?;
        let size = u32::try_from(size).map_err(|_| P2pError::Config("peer send buffer: too large".into()))?;
        sock.set_send_buffer_size(size).map_err(&err)?;
        // The kernel caps the size at net.core.wmem_max (then doubles it, on Linux): say so rather than run with
        // another bound than the one asked for.
        let asked = if cfg!(target_os = "linux") {
            2 * u64::from(size)
        } else {
            u64::from(size)
        };
        if let Ok(got) = sock.send_buffer_size()
            && u64::from(got) < asked
        {
            tracing::warn!(
                asked = size,
                got,
                "--peer-send-buffer capped by the kernel (net.core.wmem_max): raise that sysctl for a larger buffer"
            );
        }
    }
    sock.bind(addr).map_err(&err)?;
    sock.listen(1024).map_err(&err)
}

/// The IP this host uses to reach `url`'s host, and that host's IP: connecting a UDP socket sends nothing but makes
/// the kernel pick the route and the source address.
fn route_source(url: &str) -> Result<(IpAddr, IpAddr), P2pError> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let fail = |reason: String| P2pError::Advertise(format!("scheduler {url}: {reason}"));
    let target = hostport
        .to_socket_addrs()
        .or_else(|_| format!("{hostport}:80").to_socket_addrs())
        .map_err(|e| fail(format!("cannot resolve it: {e}")))?
        .next()
        .ok_or_else(|| fail("resolves to nothing".into()))?;
    let bind = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let sock = UdpSocket::bind(bind).map_err(|e| fail(format!("cannot open a UDP socket to find the route: {e}")))?;
    sock.connect(target).map_err(|e| fail(format!("no route to it: {e}")))?;
    let local = sock.local_addr().map_err(|e| fail(e.to_string()))?;
    Ok((local.ip(), target.ip()))
}

/// The address peers should use: `advertise` if given, else the source address of the route to the first
/// scheduler, else (no scheduler) the peer API's own address if it is a specific one. A loopback address
/// advertised to a scheduler that is not on loopback would send every peer to itself and every pull back to the
/// origin (Dragonfly's advertiseIp pitfall): refused loudly.
pub fn advertise(
    advertise: Option<IpAddr>,
    schedulers: &[String],
    peer_listen: Option<SocketAddr>,
) -> Result<IpAddr, P2pError> {
    let scheduler = schedulers.first();
    let ip = match (advertise, scheduler) {
        (Some(ip), _) => ip,
        (None, Some(s)) => route_source(s)?.0,
        (None, None) => match peer_listen {
            Some(a) if !a.ip().is_unspecified() => a.ip(),
            _ => {
                return Err(P2pError::Advertise(
                    "no --scheduler and no --advertise-addr: cannot tell peers where this node is".into(),
                ));
            }
        },
    };
    match scheduler {
        Some(s) => check_advertised(ip, route_source(s)?.1, s)?,
        None if ip.is_unspecified() => {
            return Err(P2pError::Advertise(format!(
                "cannot advertise {ip}: pass --advertise-addr"
            )));
        }
        None => {}
    }
    Ok(ip)
}

/// Whether peers of a scheduler at `target` can reach a node advertising `ip`.
fn check_advertised(ip: IpAddr, target: IpAddr, scheduler: &str) -> Result<(), P2pError> {
    if ip.is_loopback() && !target.is_loopback() {
        return Err(P2pError::Advertise(format!(
            "refusing to advertise loopback address {ip} to scheduler {scheduler}, which is not on loopback: peers \
             would connect to themselves and every pull would go back to the origin; pass --advertise-addr with this \
             host's address on the scheduler's network"
        )));
    }
    if ip.is_unspecified() {
        return Err(P2pError::Advertise(format!(
            "cannot advertise {ip}: pass --advertise-addr"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_never_advertised_to_a_remote_scheduler() {
        let lo = IpAddr::from([127, 0, 0, 1]);
        let remote = IpAddr::from([198, 18, 0, 1]);
        let err = check_advertised(lo, remote, "http://198.18.0.1:8002")
            .unwrap_err()
            .to_string();
        assert!(err.contains("refusing to advertise loopback"), "{err}");
        assert!(check_advertised(lo, lo, "http://127.0.0.1:8002").is_ok());
        assert!(check_advertised(IpAddr::from([198, 18, 0, 7]), remote, "s").is_ok());
        assert!(check_advertised(IpAddr::from([0, 0, 0, 0]), remote, "s").is_err());
        assert!(advertise(None, &[], Some("0.0.0.0:1".parse().unwrap())).is_err());
        assert_eq!(
            advertise(None, &[], Some("127.0.0.9:1".parse().unwrap())).unwrap(),
            IpAddr::from([127, 0, 0, 9])
        );
    }

    /// The size fixed on the listener is the one every served connection gets (Linux doubles it; without a size the
    /// kernel grows each connection's buffer as it goes, so only the exact doubled value shows it was applied).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn peer_connections_get_the_send_buffer_set_on_the_listener() {
        let listener = peer_listener("127.0.0.1:0".parse().unwrap(), Some(24 << 10)).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (served, _) = listener.accept().await.unwrap();
        let served = tokio::net::TcpSocket::from_std_stream(served.into_std().unwrap());
        assert_eq!(served.send_buffer_size().unwrap(), 2 * (24 << 10));
        // Without a size, the kernel's default (and autotuning) stays.
        let listener = peer_listener("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (served, _) = listener.accept().await.unwrap();
        let served = tokio::net::TcpSocket::from_std_stream(served.into_std().unwrap());
        assert_ne!(served.send_buffer_size().unwrap(), 2 * (24 << 10));
        let err = peer_listener("127.0.0.1:0".parse().unwrap(), Some(100)).unwrap_err();
        assert!(err.to_string().contains("between 4K and 1G"), "{err}");
    }
}
