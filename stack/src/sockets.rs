//! Reuse of smoltcp TCP sockets: a socket's buffers are allocated once and the
//! socket goes back to an idle list when its connection has fully closed.

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;

use crate::config::StackConfig;
use crate::ports::PortAllocator;

struct Closing {
    handle: SocketHandle,
    local_port: Option<u16>,
    since: Instant,
    /// Poll round it was retired in; reclaimed only in a later round, after an
    /// egress poll has sent its FIN or RST.
    round: u64,
}

#[derive(Default)]
pub(crate) struct SocketPool {
    idle: Vec<SocketHandle>,
    closing: Vec<Closing>,
    created: usize,
    round: u64,
}

impl SocketPool {
    pub(crate) fn created(&self) -> usize {
        self.created
    }

    pub(crate) fn closing(&self) -> usize {
        self.closing.len()
    }

    /// A closed socket, reused or new.
    pub(crate) fn take(
        &mut self,
        sockets: &mut SocketSet<'static>,
        cfg: &StackConfig,
    ) -> SocketHandle {
        if let Some(h) = self.idle.pop() {
            return h;
        }
        let rx = tcp::SocketBuffer::new(vec![0u8; cfg.tcp_rx_buffer]);
        let tx = tcp::SocketBuffer::new(vec![0u8; cfg.tcp_tx_buffer]);
        let mut sock = tcp::Socket::new(rx, tx);
        // The proxy writes whole heads and body slices; Nagle would only
        // delay the last segment of each.
        sock.set_nagle_enabled(false);
        sock.set_congestion_control(tcp::CongestionControl::Cubic);
        self.created += 1;
        sockets.add(sock)
    }

    /// Returns a socket that never left the Closed state.
    pub(crate) fn put_closed(&mut self, _sockets: &mut SocketSet<'static>, handle: SocketHandle) {
        self.idle.push(handle);
    }

    /// Starts closing (FIN) or resets a socket; it is reused once closed.
    pub(crate) fn retire(
        &mut self,
        sockets: &mut SocketSet<'static>,
        handle: SocketHandle,
        local_port: Option<u16>,
        reset: bool,
        now: Instant,
    ) {
        let sock = sockets.get_mut::<tcp::Socket<'static>>(handle);
        if reset {
            sock.abort();
        } else {
            sock.close();
        }
        self.closing.push(Closing {
            handle,
            local_port,
            since: now,
            round: self.round,
        });
    }

    /// Moves fully closed sockets (and ones lingering too long) back to idle.
    pub(crate) fn reclaim(
        &mut self,
        sockets: &mut SocketSet<'static>,
        ports: &mut PortAllocator,
        now: Instant,
        linger: smoltcp::time::Duration,
    ) {
        self.round += 1;
        let mut i = 0;
        while i < self.closing.len() {
            let c = &self.closing[i];
            if c.round + 1 >= self.round {
                i += 1;
                continue;
            }
            let sock = sockets.get_mut::<tcp::Socket<'static>>(c.handle);
            let state = sock.state();
            // TIME_WAIT holds no data; new client connections use new ports,
            // and upstream ports are reused round-robin, far apart in time.
            let done = state == tcp::State::Closed
                || state == tcp::State::TimeWait
                || now >= c.since + linger;
            if done {
                if state != tcp::State::Closed {
                    sock.abort();
                }
                // Reuse resets the socket (`listen`/`connect`); an RST that
                // `abort` queued here may be lost, which TIME_WAIT tolerates.
                let c = self.closing.swap_remove(i);
                if let Some(p) = c.local_port {
                    ports.free(p);
                }
                self.idle.push(c.handle);
            } else {
                i += 1;
            }
        }
    }
}
