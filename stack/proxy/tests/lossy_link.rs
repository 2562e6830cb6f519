//! TCP over a lossy link: the back-to-back harness drops frames at random
//! (seeded, so every run drops the same ones) on both legs — client and
//! origin — in both directions. A large download through the proxy must
//! arrive intact, repaired by loss recovery (fast retransmit, then the
//! holes the peer's SACK blocks reveal), without a storm of retransmission
//! timeouts. The clock is simulated: the figures printed are deterministic.

mod common;

use common::*;

/// The body `/big` serves (the harness origin's pattern).
fn expected_body(len: u32) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Steps until the client socket may send (the SYN or its answer may be
/// lost: the first retransmission comes after the initial 1 s RTO).
fn connect_patiently(lab: &mut Lab) -> SocketHandle {
    let c = lab.connect();
    for _ in 0..30_000 {
        if lab.sockets.get::<tcp::Socket>(c).may_send() {
            return c;
        }
        lab.step(1);
    }
    panic!("no connection through the lossy link in 30 s");
}

struct Download {
    body_ok: bool,
    sim_ms: u64,
    fast_retransmits: u64,
    timeouts: u64,
    dropped_from_edge: u64,
    dropped_to_edge: u64,
    tx_buffers_grown: u64,
    buffer_growth_refused: u64,
    /// Grown buffer bytes still held once every socket was recycled.
    buffer_grown_bytes_after: u64,
}

fn download(percent: f64, seed: u64, len: u32) -> Download {
    download_over(percent, seed, len, 0, |_| {})
}

/// As `download_over`, with loss on the client's link only (the lab's
/// `loss` bench impairs only that one).
fn download_over_client_loss(percent: f64, seed: u64, len: u32, delay_ms: u64) -> Download {
    download_with(percent, seed, len, delay_ms, false, |_| {})
}

/// A download over a client link with `percent` loss and `delay_ms` each
/// way, on an edge configured by `tune`.
fn download_over(
    percent: f64,
    seed: u64,
    len: u32,
    delay_ms: u64,
    tune: impl FnOnce(&mut StackConfig),
) -> Download {
    download_with(percent, seed, len, delay_ms, true, tune)
}

fn download_with(
    percent: f64,
    seed: u64,
    len: u32,
    delay_ms: u64,
    lossy_origin: bool,
    tune: impl FnOnce(&mut StackConfig),
) -> Download {
    let mut lab = Lab::with_config(Origin::Serving, |c| {
        c.timeouts.client_idle = std::time::Duration::from_secs(600);
        c.timeouts.upstream_response = std::time::Duration::from_secs(600);
        tune(c);
    });
    lab.big_body = len;
    lab.lossy = Some(Lossy::new(percent, seed));
    lab.lossy_origin = lossy_origin;
    lab.client_delay_ms = delay_ms;
    let c = connect_patiently(&mut lab);
    let start = lab.now;
    lab.send(c, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    let raw = lab.read_until(c, 1_200_000, |b| Response::parse(b).is_some());
    let sim_ms = (lab.now - start).total_millis();
    let r = Response::parse(&raw).unwrap_or_else(|| {
        panic!(
            "the download did not complete in 20 simulated minutes: {} bytes",
            raw.len()
        )
    });
    assert_eq!(r.status, 200);
    let body_ok = r.body == expected_body(len);
    // Close both ends and let every socket finish and be recycled: the
    // counters are harvested then.
    lab.sockets.get_mut::<tcp::Socket>(c).close();
    lab.origin_closes_all();
    for _ in 0..120 {
        lab.step(1_000);
    }
    let s = lab.edge.stats();
    let l = lab.lossy.expect("lossy");
    Download {
        body_ok,
        sim_ms,
        fast_retransmits: s.net.tcp_fast_retransmits,
        timeouts: s.net.tcp_retransmit_timeouts,
        dropped_from_edge: l.dropped_from_edge,
        dropped_to_edge: l.dropped_to_edge,
        tx_buffers_grown: s.net.tcp_tx_buffers_grown,
        buffer_growth_refused: s.net.tcp_buffer_growth_refused,
        buffer_grown_bytes_after: s.net.tcp_buffer_grown_bytes,
    }
}

#[test]
fn a_10_mib_download_at_3_percent_loss_is_repaired_by_loss_recovery_not_timeouts() {
    let d = download(3.0, 7, 10 << 20);
    eprintln!(
        "10 MiB at 3 %: {} ms simulated, edge fast retransmits {}, timeouts {}, frames dropped from the edge {} / to it {}",
        d.sim_ms, d.fast_retransmits, d.timeouts, d.dropped_from_edge, d.dropped_to_edge
    );
    assert!(d.body_ok, "the body arrived corrupted");
    assert!(
        d.dropped_from_edge > 100,
        "the link dropped too little to test anything"
    );
    // Most of what the edge lost (its data segments to the client, and
    // ACKs to the origin, which cost it nothing) is resent by loss
    // recovery...
    assert!(
        d.fast_retransmits * 2 >= d.dropped_from_edge,
        "fast retransmits {} for {} dropped frames",
        d.fast_retransmits,
        d.dropped_from_edge
    );
    // ...without resending much that was not lost (at most twice what the
    // link dropped from the edge)...
    assert!(
        d.fast_retransmits <= 2 * d.dropped_from_edge,
        "fast retransmits {} for {} dropped frames: spurious resends",
        d.fast_retransmits,
        d.dropped_from_edge
    );
    // ...in bounded (simulated, deterministic) time: 53.6 s before loss
    // recovery, 6.9 s with it...
    assert!(d.sim_ms < 15_000, "{} ms simulated", d.sim_ms);
    // ...and a timeout is the exception: at most one per 20 losses.
    assert!(
        d.timeouts * 20 <= d.dropped_from_edge,
        "{} retransmission timeouts for {} dropped frames",
        d.timeouts,
        d.dropped_from_edge
    );
}

#[test]
fn a_clean_link_needs_no_retransmission() {
    let d = download(0.0, 1, 1 << 20);
    assert!(d.body_ok);
    assert_eq!((d.fast_retransmits, d.timeouts), (0, 0));
}

/// 10 MiB over a 50 ms round trip, no loss: the 64 KiB transmit buffer
/// alone allows 64 KiB per round trip (8.6 s simulated); the client's
/// 256 KiB window about 3. The buffer must grow to what the path holds, and
/// be given back once the connection is over. (4.3 s simulated: the
/// harness client answers each 1 ms step's burst with one stretch ACK, and
/// slow start grows by at most two segments per ACK, RFC 3465.)
#[test]
fn a_long_fat_path_grows_the_transmit_buffer_and_the_memory_returns_after() {
    const LEN: u32 = 10 << 20;
    let grown = download_over(0.0, 1, LEN, 25, |_| {});
    eprintln!(
        "10 MiB at 50 ms RTT: {} ms simulated, {} growths, {} refused",
        grown.sim_ms, grown.tx_buffers_grown, grown.buffer_growth_refused
    );
    assert!(grown.body_ok, "the body arrived corrupted");
    assert!(grown.tx_buffers_grown >= 2, "{}", grown.tx_buffers_grown);
    assert_eq!(grown.buffer_growth_refused, 0);
    assert_eq!(
        grown.buffer_grown_bytes_after, 0,
        "grown buffers outlived their connection"
    );
    assert!(grown.sim_ms < 5_000, "{} ms simulated", grown.sim_ms);

    // The same path with growth off (maximum = starting size) is capped at
    // a buffer per round trip: what the test above must beat.
    let fixed = download_over(0.0, 1, LEN, 25, |c| {
        c.net.tcp_tx_buffer_max = c.net.tcp_tx_buffer;
    });
    eprintln!("the same with a fixed buffer: {} ms", fixed.sim_ms);
    assert!(fixed.body_ok);
    assert_eq!(fixed.tx_buffers_grown, 0);
    assert!(fixed.sim_ms >= 7_500, "{} ms simulated", fixed.sim_ms);
}

/// A worker whose budget for grown buffers is spent keeps serving at the
/// starting size and counts each refused growth.
#[test]
fn buffer_growth_past_the_worker_budget_is_refused_and_counted() {
    let d = download_over(0.0, 1, 2 << 20, 25, |c| {
        c.net.tcp_buffer_budget = 1024;
    });
    assert!(d.body_ok);
    assert_eq!(d.tx_buffers_grown, 0);
    assert!(d.buffer_growth_refused >= 1);
    assert_eq!(d.buffer_grown_bytes_after, 0);
}

/// Uploads `len` bytes to `/upload` over a client link with `delay_ms`
/// each way, from a client that may have 4 MiB in flight; returns the
/// simulated milliseconds until the origin's whole answer (which echoes
/// the body: a download as large) and the edge's stats.
fn upload_over(
    len: usize,
    delay_ms: u64,
    tune: impl FnOnce(&mut StackConfig),
) -> (u64, ferrogate_proxy::net::NetStats) {
    let mut lab = Lab::with_config(Origin::Serving, |c| {
        c.timeouts.client_idle = std::time::Duration::from_secs(600);
        c.timeouts.upstream_response = std::time::Duration::from_secs(600);
        // A whole flight of the client arrives within one 1 ms step.
        c.net.rx_queue_frames = 4096;
        tune(c);
    });
    lab.client_delay_ms = delay_ms;
    let c = lab.connect_with(
        80,
        // The origin echoes the body: the answer is as large.
        tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 4 << 20]),
            tcp::SocketBuffer::new(vec![0; 4 << 20]),
        ),
    );
    let start = lab.now;
    let mut out =
        format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n").into_bytes();
    out.extend((0..len).map(|i| b'a' + (i % 26) as u8));
    let mut sent = 0;
    let mut answer = vec![];
    for _ in 0..600_000 {
        lab.step(1);
        let s = lab.sockets.get_mut::<tcp::Socket>(c);
        if sent < out.len() && s.may_send() {
            sent += s.send_slice(&out[sent..]).unwrap();
        }
        while s.can_recv() {
            s.recv(|b| {
                answer.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        if Response::parse(&answer).is_some() {
            break;
        }
    }
    let r = Response::parse(&answer)
        .unwrap_or_else(|| panic!("the upload was not answered: sent {sent} of {}", out.len()));
    assert!(r.body.starts_with(format!("got {len}: ").as_bytes()));
    let sim_ms = (lab.now - start).total_millis();
    assert_eq!(lab.origin_bodies.len(), 1);
    assert_eq!(lab.origin_bodies[0], out[out.len() - len..]);
    lab.sockets.get_mut::<tcp::Socket>(c).close();
    lab.origin_closes_all();
    for _ in 0..120 {
        lab.step(1_000);
    }
    (sim_ms, lab.edge.stats().net)
}

/// 16 MiB up over a 50 ms round trip: the edge's 64 KiB receive window
/// alone allows 64 KiB per round trip (13 s); the receive buffer grows
/// when a round trip delivers most of it (the window scale in the SYN-ACK
/// announced room for the maximum from the start), and the memory returns.
#[test]
fn a_long_fat_upload_grows_the_receive_window() {
    const LEN: usize = 16 << 20;
    let (grown_ms, grown) = upload_over(LEN, 25, |_| {});
    let (fixed_ms, fixed) = upload_over(LEN, 25, |c| c.net.tcp_rx_buffer_max = c.net.tcp_rx_buffer);
    eprintln!(
        "16 MiB up at 50 ms RTT: {grown_ms} ms simulated ({} receive buffers grown), {fixed_ms} ms with a fixed window",
        grown.tcp_rx_buffers_grown
    );
    assert!(grown.tcp_rx_buffers_grown >= 2, "{grown:?}");
    // Each buffer doubles a few times and keeps its size for the transfer
    // (the client socket's receive side, the upstream socket's transmit
    // side; the answer back): no parking and growing again mid-transfer.
    assert!(
        grown.tcp_rx_buffers_grown + grown.tcp_tx_buffers_grown <= 24,
        "{grown:?}"
    );
    assert_eq!(
        grown.tcp_buffer_grown_bytes, 0,
        "grown buffers outlived their connection"
    );
    assert_eq!(fixed.tcp_rx_buffers_grown, 0);
    assert!(fixed_ms >= 13_000, "{fixed_ms} ms with a fixed window");
    assert!(
        grown_ms * 2 < fixed_ms,
        "{grown_ms} ms grown vs {fixed_ms} ms fixed"
    );
}

/// A keep-alive connection that grew its buffers for a big download and
/// went idle (its buffers parked) starts the next, small exchange with the
/// starting size: what filled the old buffers is forgotten.
#[test]
fn an_idle_keep_alive_connection_does_not_grow_again_for_a_small_request() {
    let mut lab = Lab::with_config(Origin::Serving, |c| {
        c.timeouts.client_idle = std::time::Duration::from_secs(600);
    });
    lab.big_body = 4 << 20;
    lab.client_delay_ms = 25;
    let c = lab.connect();
    lab.send(c, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    let raw = lab.read_until(c, 200_000, |b| {
        Response::parse(b).is_some_and(|r| r.body.len() == 4 << 20)
    });
    assert!(Response::parse(&raw).is_some());
    for _ in 0..20 {
        lab.step(100);
    }
    let before = lab.edge.stats().net;
    assert!(before.tcp_tx_buffers_grown >= 1, "{before:?}");
    assert_eq!(
        before.tcp_buffer_grown_bytes, 0,
        "the idle connection kept its grown buffers"
    );
    let r = lab.exchange(c, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    let after = lab.edge.stats().net;
    assert_eq!(after.tcp_tx_buffers_grown, before.tcp_tx_buffers_grown);
    assert_eq!(after.tcp_buffer_grown_bytes, 0);
}

/// Loss-limited throughput: 10 MiB at 1 % loss each way over a 10 ms
/// round trip. Random loss caps any Reno-friendly TCP near the Mathis rate
/// (MSS/RTT · 1.22/√p ≈ 14 Mbit/s here: 6 s); congestion avoidance that
/// grew by one MSS per ACK instead of per ACKed bytes (a delayed ACK covers
/// two segments) took 12.9 s simulated, the kernel's rate was twice ours.
#[test]
fn loss_limited_throughput_reaches_the_rate_the_loss_allows() {
    let d = download_over(1.0, 7, 10 << 20, 5, |_| {});
    eprintln!(
        "10 MiB at 1 %, 10 ms RTT: {} ms simulated, fast retransmits {}, timeouts {}",
        d.sim_ms, d.fast_retransmits, d.timeouts
    );
    assert!(d.body_ok);
    assert!(d.sim_ms < 9_000, "{} ms simulated", d.sim_ms);
    assert!(
        d.timeouts * 20 <= d.dropped_from_edge,
        "{} timeouts",
        d.timeouts
    );
}

/// The first megabyte on a lossy, long path: 1 MiB at 1 % loss (the
/// client's link only, both ways) over a 50 ms round trip, mean of 12
/// seeded runs. A loss found in slow start cut the window to 0.7 of what
/// was in flight when it was found (about half of what the path had just
/// carried): mean 2.53 s simulated; from the window, as Linux: 2.0 s.
#[test]
fn the_first_megabyte_over_a_lossy_long_path_keeps_its_pace() {
    let times: Vec<u64> = (1..13)
        .map(|seed| {
            let d = download_over_client_loss(1.0, seed, 1 << 20, 25);
            assert!(d.body_ok);
            d.sim_ms
        })
        .collect();
    let mean = times.iter().sum::<u64>() / times.len() as u64;
    eprintln!("1 MiB at 1 %, 50 ms RTT: mean {mean} ms simulated, all {times:?}");
    assert!(mean < 2_250, "mean {mean} ms: {times:?}");
}
