//! The systemd notification protocol (`sd_notify`): `READY=1` once the gateway listens,
//! `STOPPING=1` when it begins to shut down, and `WATCHDOG=1` pings when the unit sets
//! `WatchdogSec`. Without `$NOTIFY_SOCKET` (not under systemd) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends one notification; returns whether it was delivered. Never blocks: this runs on the
/// async workers, and a manager that stops reading (a full socket queue) must not stall the
/// gateway. A dropped `WATCHDOG=1` is sent again at the next ping.
pub(crate) fn notify(state: &str) -> bool {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(datagram) = UnixDatagram::unbound() else {
        return false;
    };
    if datagram.set_nonblocking(true).is_err() {
        return false;
    }
    let bytes = socket.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket name (Linux).
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|address| datagram.send_to_addr(state.as_bytes(), &address))
    } else {
        datagram.send_to(state.as_bytes(), &socket)
    };
    sent.is_ok()
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, when it is meant for this process.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    // WATCHDOG_PID, when set, names the process the watchdog is for.
    let for_us = std::env::var("WATCHDOG_PID").map_or(true, |pid| {
        pid.parse::<u32>().ok() == Some(std::process::id())
    });
    if !for_us {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
