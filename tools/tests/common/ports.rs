//! Ports for test nodes on loopback, shared by the in-process and the process clusters.

use std::sync::atomic::{AtomicU32, Ordering};

/// A port that is free now for both UDP (QUIC) and TCP (a status port), chosen below the
/// kernel's ephemeral range (32768 and up on Linux): a client socket bound to port 0 elsewhere
/// in the test run can then not take it between now and the node's own bind, as it could take
/// a port the kernel handed out from bind(0) and that was released. Successive calls walk the
/// range from a point set by the process id, so parallel test binaries start apart.
pub fn free_port() -> u16 {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        let port = u16::try_from(LOW + offset).expect("below 32000");
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        if udp.is_ok() && tcp.is_ok() {
            return port;
        }
    }
}
