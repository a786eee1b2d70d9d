//! The kernel's view of this machine's TCP connections (Linux's `/proc/net/tcp`), for tests of socket options
//! that nothing else shows.

/// A connection's timer, as `/proc/net/tcp` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timer {
    /// `0` none, `1` retransmission, `2` keepalive, `4` zero-window probe.
    pub kind: u8,
    /// When it is due, in hundredths of a second (`USER_HZ`).
    pub due: u64,
}

/// The timer of every established IPv4 connection this machine has to `port` (every process's, from its side).
pub fn timers_of_connections_to(port: u16) -> Vec<Timer> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let remote = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|fields| fields.len() > 5 && fields[2].ends_with(&remote) && fields[3] == "01")
        .map(|fields| {
            let (kind, due) = fields[5].split_once(':').expect("a timer field");
            Timer {
                kind: u8::from_str_radix(kind, 16).expect("a timer kind"),
                due: u64::from_str_radix(due, 16).expect("a timer's due time"),
            }
        })
        .collect()
}
