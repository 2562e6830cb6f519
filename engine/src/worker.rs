//! The run-to-completion worker: one thread per NIC queue, pinned, looping
//! rx burst → steer → stack → tx burst. No locks or allocation per frame.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant as StdInstant};

use arc_swap::ArcSwap;
use ferrogate_proxy::{Instant, RouteTable, Stack};
use ferrogate_wire::{self as wire, FrameClass};

use crate::config::{PollingMode, PortPlan};
use crate::handoff::HandoffPorts;
use crate::io::PacketIo;
use crate::relay::RelayLink;
use crate::stats::{StatsCell, WorkerStats};
use crate::tap::ExceptionTap;
use crate::upgrade::HandoverSlot;

/// Flushes per pass while the tx ring is full (a kick each at most).
const TX_FLUSH_ROUNDS: u32 = 4;
use ferrogate_ebpf::swfilter::{Admit, Buckets, FilterCounters, SwFilter, SwRules};

/// The software filter tier a worker runs before its stack (backends
/// without XDP).
pub(crate) struct WorkerFilter {
    /// The current rules: a cached `Arc`, refreshed only when a new rule
    /// set is stored (one pointer compare per burst, not an `ArcSwap` load).
    pub rules: arc_swap::Cache<Arc<ArcSwap<SwRules>>, Arc<SwRules>>,
    pub buckets: Arc<Buckets>,
    pub counters: Arc<FilterCounters>,
}

/// How often a worker publishes its counters.
const PUBLISH_EVERY: Duration = Duration::from_millis(10);
/// Pool and route counters allocate when copied: publish them less often.
const L7_PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// Longest sleep of an idle adaptive worker. Frames on the port and
/// hand-offs (the eventfd) wake it sooner; the cap bounds what a port without
/// an fd (DPDK, memory) waits.
const MAX_SLEEP: Duration = Duration::from_micros(500);
/// How long a stopping worker keeps exchanging frames after it closed its
/// idle upstream connections.
const CLOSE_SETTLE: Duration = Duration::from_millis(20);
/// Longest sleep in interrupt mode: a frame on the socket or a hand-off
/// (the eventfd) wakes the worker at once.
const INTERRUPT_SLEEP: Duration = Duration::from_millis(2);
/// How often a worker reads the exception TAP (one read(2) per round, not
/// per pass: the host's traffic waits at most this, plus a sleep).
const EXCEPTION_POLL_EVERY: Duration = Duration::from_micros(200);
/// Most frames the kernel's TAP queue gives per round, and most frames a
/// worker writes to it per rx burst: the kernel runs its receive path for
/// each write on the worker's core, so a flood of host (or multicast)
/// frames must not starve the VIPs' (the rest is dropped and counted).
const EXCEPTION_BURST: usize = 64;
/// Longest time between two polls of an idle stack (its `poll_at` is
/// usually sooner): interface maintenance runs at least this often.
const IDLE_POLL_MS: u64 = 50;

/// A sleep that ends by the stack's next due time, at most `cap`.
fn until(now: Instant, due: Instant, cap: Duration) -> Duration {
    if due <= now {
        return Duration::ZERO;
    }
    cap.min(Duration::from_micros((due - now).total_micros()))
}

pub(crate) struct Worker {
    pub id: usize,
    pub queue: u32,
    pub cpu: usize,
    pub io: Box<dyn PacketIo>,
    pub stack: Stack,
    pub handoff: HandoffPorts,
    pub ports: PortPlan,
    /// The HTTP/3 ports (fixed at start): a QUIC datagram whose
    /// connection id names another worker goes to that worker.
    pub h3_ports: Vec<u16>,
    /// This engine's QUIC generation: while a binary upgrade's predecessor
    /// still serves, datagrams whose connection ids carry the other one
    /// are its, and are relayed to it.
    pub quic_generation: u8,
    pub routes: Arc<ArcSwap<RouteTable>>,
    pub epoch: Arc<AtomicU64>,
    pub shutdown: Arc<AtomicBool>,
    /// A graceful stop: the stack drains (`Engine::drain`).
    pub draining: Arc<AtomicBool>,
    pub stats: Arc<StatsCell>,
    pub batch: usize,
    pub polling: PollingMode,
    pub mac: [u8; 6],
    pub clock_start: StdInstant,
    pub filter: Option<WorkerFilter>,
    /// The host's exception TAP queue (a DPDK port with
    /// `engine.dpdk.exception_iface`): non-VIP frames go to the kernel
    /// through it, and what the kernel sends through it goes out the port.
    pub exception: Option<ExceptionTap>,
    /// A binary upgrade's predecessor: where the engine offers the relay
    /// port this worker swaps its NIC socket for.
    pub handover: Arc<HandoverSlot>,
    /// A binary upgrade's successor: frames of the predecessor's flows go
    /// through it, and the predecessor's frames come back to go out, until
    /// the predecessor is done.
    pub relay: Option<RelayLink>,
}

/// How long a worker relaying for a predecessor sleeps at most: the
/// predecessor's frames do not wake it.
const RELAY_SLEEP: Duration = Duration::from_micros(200);

/// Hands a frame to this worker's stack, or, while a binary upgrade's
/// predecessor still serves its flows, to the predecessor when it is not
/// one of ours.
fn deliver(stack: &mut Stack, relay: &mut Option<RelayLink>, class: &FrameClass, f: &[u8]) {
    if let Some(r) = relay.as_mut()
        && !stack.claims(class)
    {
        r.send(f);
        return;
    }
    stack.handle_frame(f);
}

impl Worker {
    pub(crate) fn run(mut self) {
        if let Err(e) = ferrogate_numa::pin_current_thread(self.cpu) {
            tracing::warn!(worker = self.id, cpu = self.cpu, error = %e, "worker not pinned");
        }
        tracing::info!(worker = self.id, queue = self.queue, cpu = self.cpu, backend = %self.io.kind(), "worker running");
        let mut s = WorkerStats {
            worker: self.id,
            queue: self.queue,
            cpu: self.cpu,
            ..Default::default()
        };
        let mut seen_epoch = self.epoch.load(Ordering::Acquire);
        s.snapshot_version = self.stack.routes().version;
        let mut last_publish = StdInstant::now();
        let mut last_l7_publish = StdInstant::now();
        let mut idle_since: Option<StdInstant> = None;
        // Start of the last iteration if it moved frames: its busy time is
        // counted from the next iteration's clock read (one read per loop).
        let mut busy_from: Option<StdInstant> = None;
        let mut next_timer = Instant::from_micros(0);
        let mut rx_error_logged = false;
        let mut last_exception_poll = StdInstant::now();

        while !self.shutdown.load(Ordering::Relaxed) {
            let wall = StdInstant::now();
            if let Some(from) = busy_from.take() {
                s.busy_ns += wall.duration_since(from).as_nanos() as u64;
            }
            let since_start = wall.duration_since(self.clock_start);
            let now = Instant::from_micros(since_start.as_micros() as i64);

            // A new snapshot applies between batches, never inside one.
            let epoch = self.epoch.load(Ordering::Acquire);
            let mut switched = false;
            if !s.draining && self.draining.load(Ordering::Relaxed) {
                s.draining = true;
                self.stack.begin_drain(now);
                tracing::info!(worker = self.id, "draining");
                switched = true;
            }
            if self.handover.pending() {
                self.let_go_of_the_nic();
                switched = true;
            }
            if epoch != seen_epoch {
                seen_epoch = epoch;
                let routes = self.routes.load_full();
                s.snapshot_version = routes.version;
                self.stack.set_routes(routes);
                // Report the switch right away (the control side waits for
                // every worker to run the version it applied).
                switched = true;
            }

            let now_ns = since_start.as_nanos() as u64;
            let received = self.receive_burst(&mut s, &mut rx_error_logged, now_ns);
            let strays_before = s.handoff_strays;
            let handed = {
                let stack = &mut self.stack;
                let relay = &mut self.relay;
                let handoff = &self.handoff;
                let (strays, dropped) = (&mut s.handoff_strays, &mut s.handoff_dropped);
                handoff.receive(self.batch, |f, hops| {
                    // A stray this worker has no socket for either goes on
                    // round the workers (dropped and counted if the next
                    // one's ring is full); the last one delivers it.
                    if hops > 0
                        && let FrameClass::Tcp(m) = wire::classify(f)
                        && stack.is_stray(&m)
                        && handoff.next_for_stray(hops + 1).is_some()
                    {
                        if handoff.send_stray(f, hops + 1) {
                            *strays += 1;
                        } else {
                            *dropped += 1;
                        }
                        return;
                    }
                    // Only a relaying worker must tell its own flows apart
                    // (a frame nobody here holds goes to the predecessor);
                    // otherwise a handed-off frame is not classified again.
                    if relay.is_some() {
                        deliver(stack, relay, &wire::classify(f), f);
                    } else {
                        stack.handle_frame(f);
                    }
                })
            };
            if s.handoff_strays != strays_before {
                s.handoff_wakeups += self.handoff.wake_receivers() as u64;
            }
            s.handoff_in += handed as u64;
            let mut work = received + handed;
            if let Some(r) = self.relay.as_mut() {
                let io = &mut self.io;
                work += r.forward(self.batch, |f| io.tx_frame(f));
                s.upgrade_relayed_out = r.relayed_out;
                s.upgrade_relayed_in = r.relayed_in;
                s.upgrade_relay_dropped = r.dropped;
                if r.finished() {
                    self.relay = None;
                    // Unless this engine has handed over in turn (its even
                    // ports are the rule again until it exits).
                    if self.io.kind() != crate::io::BackendKind::Relay {
                        self.stack.end_port_split();
                    }
                    tracing::info!(
                        worker = self.id,
                        relayed_out = s.upgrade_relayed_out,
                        relayed_in = s.upgrade_relayed_in,
                        "the predecessor is done: the whole NIC queue and port range are ours"
                    );
                }
            }
            if self.exception.is_some()
                && wall.duration_since(last_exception_poll) >= EXCEPTION_POLL_EVERY
            {
                last_exception_poll = wall;
                work += self.forward_host_frames(&mut s);
            }

            if work > 0 || now >= next_timer {
                self.stack.poll(now);
                // Without frames, the stack runs again when it asks to (a
                // retransmit, a timeout, a health check), or after
                // IDLE_POLL at the latest.
                let latest = now + smoltcp_ms(IDLE_POLL_MS);
                next_timer = self.stack.poll_at(now).map_or(latest, |t| t.min(latest));
            }
            self.send_tx();
            if self.stack.tx_pending() > 0 {
                // The ring is full: no sleep before the rest is out.
                next_timer = now;
            }

            if work > 0 {
                s.busy_loops += 1;
                busy_from = Some(wall);
                idle_since = None;
            } else {
                s.idle_loops += 1;
                let cap = match self.polling {
                    PollingMode::Busy => None,
                    PollingMode::Adaptive { spin } => {
                        let since = *idle_since.get_or_insert(wall);
                        (wall.duration_since(since) >= spin).then_some(MAX_SLEEP)
                    }
                    PollingMode::Interrupt => Some(INTERRUPT_SLEEP),
                };
                let cap = match self.relay {
                    Some(_) => cap.map(|c| c.min(RELAY_SLEEP)),
                    None => cap,
                };
                if let Some(cap) = cap {
                    self.sleep(&mut s, until(now, next_timer, cap));
                }
            }

            if switched || wall.duration_since(last_publish) >= PUBLISH_EVERY {
                last_publish = wall;
                s.uptime_ns = wall.duration_since(self.clock_start).as_nanos() as u64;
                s.stack = *self.stack.stats();
                s.stack.plugin_memory_bytes = self.stack.plugin_memory_bytes();
                s.io = self.io.stats();
                s.drained = self.stack.drained();
                self.stats.publish(&s);
                if wall.duration_since(last_l7_publish) >= L7_PUBLISH_EVERY {
                    last_l7_publish = wall;
                    self.stats.publish_l7(
                        self.stack.upstream_stats(),
                        self.stack.route_stats().clone(),
                    );
                }
            }
        }
        self.close_pooled(&mut s, &mut rx_error_logged);
        self.stats.publish_l7(
            self.stack.upstream_stats(),
            self.stack.route_stats().clone(),
        );
        s.stack = *self.stack.stats();
        s.stack.plugin_memory_bytes = self.stack.plugin_memory_bytes();
        s.io = self.io.stats();
        self.stats.publish(&s);
        tracing::info!(worker = self.id, "worker stopped");
    }

    /// A binary upgrade: swaps the NIC socket for the relay port the engine
    /// offered (closing the socket here, between bursts, so no frame is in
    /// its hands), keeps to even upstream ports from now on, and reports
    /// the ports it holds.
    fn let_go_of_the_nic(&mut self) {
        let Some(port) = self.handover.take() else {
            return;
        };
        let socket = std::mem::replace(&mut self.io, port);
        drop(socket);
        let held = self.stack.begin_port_split_predecessor();
        tracing::info!(
            worker = self.id,
            held_ports = held.len(),
            "NIC queue handed to the successor; relaying through it"
        );
        self.handover.done(held);
    }

    /// Moves the stack's queued frames into the tx ring and kicks it. A
    /// full ring keeps the rest queued in the stack (in order) instead of
    /// dropping it: a dropped segment costs TCP a retransmission timeout
    /// (smoltcp's is at least 1 s). A few flushes let the kernel free ring
    /// slots within this pass; what still does not fit waits for the next.
    fn send_tx(&mut self) {
        for _ in 0..TX_FLUSH_ROUNDS {
            let io = &mut self.io;
            self.stack.drain_tx_while(|f| io.tx_frame(f));
            if let Err(e) = self.io.tx_flush() {
                tracing::debug!(worker = self.id, error = %e, "tx flush failed");
            }
            if self.stack.tx_pending() == 0 {
                break;
            }
        }
    }

    /// Sends what the kernel wrote to the exception TAP out of the port;
    /// the frames it moved.
    fn forward_host_frames(&mut self, s: &mut WorkerStats) -> usize {
        let Some(tap) = self.exception.as_mut() else {
            return 0;
        };
        let io = &mut self.io;
        let (mut sent, mut dropped) = (0u64, 0u64);
        let truncated = tap.truncated;
        let n = tap.read_burst(EXCEPTION_BURST, |f| {
            if io.tx_frame(f) {
                sent += 1;
            } else {
                dropped += 1;
            }
        });
        dropped += tap.truncated - truncated;
        s.exception_from_host += sent;
        s.exception_dropped += dropped;
        n
    }

    /// Sleeps on the port and on the hand-off eventfd, unless a hand-off
    /// arrived between the last receive and the announcement of the sleep.
    fn sleep(&mut self, s: &mut WorkerStats, timeout: Duration) {
        let waker = self.handoff.waker();
        waker.going_to_sleep();
        if self.handoff.has_inbound() {
            waker.woke(false);
            return;
        }
        s.sleeps += 1;
        // An error counts as signalled: the read is harmless, a missed one not.
        let signalled = self
            .io
            .wait(timeout, self.handoff.waker().fd())
            .unwrap_or(true);
        self.handoff.waker().woke(signalled);
    }

    /// Clean stop: a FIN on every idle pooled upstream connection, then a
    /// few milliseconds of rx/tx so the origins' FINs are acknowledged and
    /// none keeps a half-dead connection (or a 4-tuple a new engine meets).
    fn close_pooled(&mut self, s: &mut WorkerStats, error_logged: &mut bool) {
        let mut first = true;
        let until = StdInstant::now() + CLOSE_SETTLE;
        while StdInstant::now() < until {
            let wall = StdInstant::now();
            let now =
                Instant::from_micros(wall.duration_since(self.clock_start).as_micros() as i64);
            if first {
                self.stack.close_idle_upstreams(now);
                first = false;
            } else {
                let now_ns = wall.duration_since(self.clock_start).as_nanos() as u64;
                self.receive_burst(s, error_logged, now_ns);
                self.stack.poll(now);
            }
            // In order, behind whatever a full ring still holds back.
            self.send_tx();
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// One rx burst, steering each frame to this stack or its owner.
    fn receive_burst(
        &mut self,
        s: &mut WorkerStats,
        error_logged: &mut bool,
        now_ns: u64,
    ) -> usize {
        let me = self.id;
        let mac = self.mac;
        let stack = &mut self.stack;
        let handoff = &self.handoff;
        let ports = &self.ports;
        let h3_ports = &self.h3_ports;
        let generation = self.quic_generation;
        let (mut out, mut dropped, mut strays) = (0u64, 0u64, 0u64);
        // One snapshot of the rules per burst (no allocation, no lock).
        let filter = self.filter.as_mut().map(|f| {
            let WorkerFilter {
                rules,
                buckets,
                counters,
            } = f;
            SwFilter {
                rules: rules.load(),
                buckets,
                counters,
            }
        });
        let exception = self.exception.as_ref();
        let relay = &mut self.relay;
        let (mut to_host, mut host_dropped) = (0u64, 0u64);
        let r = self.io.rx_burst(self.batch, &mut |f| {
            if let Some(filter) = &filter {
                match filter.admit_to(f, now_ns) {
                    Admit::Drop => return,
                    // What XDP would pass to the kernel: the host's.
                    Admit::Host if exception.is_some() => {
                        // Unicast to another MAC (a promiscuous port): the
                        // kernel would drop it as not its own (the filter
                        // counted it as the host's).
                        if f.len() < 6 || (f[0] & 1 == 0 && f[..6] != mac) {
                            return;
                        }
                        // Beyond the burst's budget: dropped, counted.
                        if to_host < EXCEPTION_BURST as u64 && exception.is_some_and(|t| t.write(f))
                        {
                            to_host += 1;
                        } else {
                            host_dropped += 1;
                        }
                        return;
                    }
                    Admit::Host | Admit::Stack => {}
                }
            }
            // A TCP segment, a datagram or an ICMP error about one belongs
            // to the worker whose range holds our port (an upstream
            // connection or UDP session); to a listener port, to whoever
            // received it.
            let class = wire::classify(f);
            if let FrameClass::Udp(m) = &class
                && h3_ports.contains(&m.key.local_port)
            {
                let datagram = m.payload(f);
                // A QUIC datagram of a connection the predecessor of a
                // binary upgrade still serves: its connection id carries
                // the other generation.
                if let Some(r) = relay.as_mut()
                    && ferrogate_proxy::quic::generation_of_datagram(datagram)
                        .is_some_and(|g| g != generation)
                {
                    r.send(f);
                    return;
                }
                // A connection another worker owns (the client's address
                // changed, so RSS chose another queue): its connection id
                // names the owner.
                if let Some(owner) = ferrogate_proxy::quic::owner_of_datagram(datagram)
                    && owner != me
                    && owner < handoff.workers()
                {
                    if handoff.send(owner, f) {
                        out += 1;
                    } else {
                        dropped += 1;
                    }
                    return;
                }
            }
            let our_port = match class {
                FrameClass::Tcp(m) => Some(m.key.local_port),
                FrameClass::Udp(m) => Some(m.key.local_port),
                FrameClass::UdpUnreachable(k) => Some(k.local_port),
                _ => None,
            };
            if let Some(port) = our_port {
                match ports.owner(port) {
                    Some(owner) if owner != me => {
                        if handoff.send(owner, f) {
                            out += 1;
                        } else {
                            dropped += 1;
                        }
                    }
                    // A client's segment on a queue whose worker holds no
                    // socket for it (the flow's hash changed: a new RSS
                    // table, or a veth peer's rehash after a timeout): the
                    // other workers are asked before it meets a RST (or,
                    // during an upgrade's relay, goes to the predecessor).
                    None if let FrameClass::Tcp(m) = &class
                        && handoff.next_for_stray(1).is_some()
                        && stack.is_stray(m) =>
                    {
                        if handoff.send_stray(f, 1) {
                            out += 1;
                            strays += 1;
                        } else {
                            dropped += 1;
                        }
                    }
                    _ => deliver(stack, relay, &class, f),
                }
                return;
            }
            match class {
                FrameClass::Arp { request } => {
                    stack.handle_frame(f);
                    if let Some(r) = relay.as_mut() {
                        // The predecessor still connects to origins: it
                        // needs the neighbour too (a request answers here).
                        let mut copy = [0u8; 128];
                        if let Some(c) = copy.get_mut(..f.len()) {
                            c.copy_from_slice(f);
                            if request {
                                wire::arp_request_to_learning_reply(c, mac);
                            }
                            r.send(c);
                        }
                    }
                    // Every worker needs the neighbour's address; only the one
                    // that received a request answers it.
                    for w in (0..handoff.workers()).filter(|&w| w != me) {
                        let sent = handoff.send_with(w, f, |copy| {
                            if request {
                                wire::arp_request_to_learning_reply(copy, mac);
                            }
                        });
                        if sent {
                            out += 1;
                        } else {
                            dropped += 1;
                        }
                    }
                }
                FrameClass::NeighborAdvert => {
                    stack.handle_frame(f);
                    if let Some(r) = relay.as_mut() {
                        r.send(f);
                    }
                    for w in (0..handoff.workers()).filter(|&w| w != me) {
                        if handoff.send(w, f) {
                            out += 1;
                        } else {
                            dropped += 1;
                        }
                    }
                }
                _ => {
                    stack.handle_frame(f);
                }
            }
        });
        s.handoff_out += out;
        s.handoff_dropped += dropped;
        s.handoff_strays += strays;
        s.exception_to_host += to_host;
        s.exception_dropped += host_dropped;
        if out > 0 {
            s.handoff_wakeups += self.handoff.wake_receivers() as u64;
        }
        match r {
            Ok(n) => n,
            Err(e) => {
                if !*error_logged {
                    tracing::error!(worker = me, error = %e, "rx burst failed");
                    *error_logged = true;
                }
                0
            }
        }
    }
}

fn smoltcp_ms(ms: u64) -> ferrogate_proxy::Duration {
    ferrogate_proxy::Duration::from_millis(ms)
}
