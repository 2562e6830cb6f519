//! A graceful stop (`Stack::begin_drain`), back to back in memory: new
//! connections are reset, idle keep-alive connections close (after a grace
//! for a request already on its way), a response in
//! flight is finished and closes its connection, and the stack reports
//! `drained` once no client connection is left.

mod common;

use common::*;

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n").into_bytes()
}

/// Steps until the client's socket is closed by the edge (FIN received),
/// or the step budget ends.
fn wait_closed_by_edge(lab: &mut Lab, c: SocketHandle) -> bool {
    for _ in 0..200 {
        lab.step(1);
        if !lab.sockets.get::<tcp::Socket>(c).may_recv() {
            return true;
        }
    }
    false
}

#[test]
fn draining_closes_idle_keep_alive_connections_after_a_grace_and_resets_new_ones() {
    let mut lab = Lab::new(Origin::Serving);
    let idle = lab.connect();
    let r = lab.exchange(idle, &get("/"));
    assert_eq!(r.status, 200);
    assert!(!r.head.to_ascii_lowercase().contains("connection: close"));
    assert!(!lab.edge.drained(), "not draining yet");
    // Idle for longer than the grace before the drain: it counts from the
    // drain's start, not from the last response.
    for _ in 0..700 {
        lab.step(1);
    }
    lab.edge.begin_drain(lab.now);
    // Not at once: a request the client sent meanwhile would fail.
    for _ in 0..400 {
        lab.step(1);
    }
    assert!(
        lab.sockets.get::<tcp::Socket>(idle).may_recv(),
        "an idle connection is kept for the grace"
    );
    assert!(
        wait_closed_by_edge(&mut lab, idle),
        "the idle connection is closed after the grace"
    );
    // A new connection is refused (reset), and counted.
    let fresh = lab.connect();
    for _ in 0..50 {
        lab.step(1);
    }
    assert_eq!(lab.client_state(fresh), tcp::State::Closed);
    let s = lab.edge.stats();
    assert_eq!(s.drain_refused, 1);
    assert!(lab.edge.drained());
}

#[test]
fn a_response_in_flight_is_finished_with_connection_close() {
    let mut lab = Lab::new(Origin::Serving);
    lab.origin_pace = Some(2000);
    let c = lab.connect();
    for _ in 0..20 {
        lab.step(1);
    }
    lab.send(c, &get("/big"));
    // The head and some of the body are through.
    let mut raw = lab.read_until(c, 50, |b| b.len() > 10_000);
    assert!(raw.starts_with(b"HTTP/1.1 200"));
    lab.edge.begin_drain(lab.now);
    assert!(!lab.edge.drained(), "a response is in flight");
    raw.extend(lab.read_until(c, 5_000, |b| Response::parse(b).is_some()));
    let r = Response::parse(&raw).expect("the whole response");
    assert_eq!(r.body.len(), 200_000);
    assert!(
        wait_closed_by_edge(&mut lab, c),
        "closed after the response"
    );
    assert!(lab.edge.drained());
    assert_eq!(lab.edge.stats().drain_cut, 0);
}

#[test]
fn a_request_after_the_drain_began_is_answered_with_connection_close() {
    let mut lab = Lab::new(Origin::Serving);
    let c = lab.connect();
    for _ in 0..20 {
        lab.step(1);
    }
    // Connected but no request yet: a new connection keeps its first one.
    lab.edge.begin_drain(lab.now);
    let r = lab.exchange(c, &get("/"));
    assert_eq!(r.status, 200);
    assert!(
        r.head.to_ascii_lowercase().contains("connection: close"),
        "{}",
        r.head
    );
    assert!(wait_closed_by_edge(&mut lab, c));
    assert!(lab.edge.drained());
}

#[test]
fn a_stop_resets_connections_the_drain_did_not_finish() {
    let mut lab = Lab::new(Origin::Serving);
    lab.origin_pace = Some(100);
    let c = lab.connect();
    for _ in 0..20 {
        lab.step(1);
    }
    lab.send(c, &get("/big"));
    let _ = lab.read_until(c, 50, |b| b.len() > 1_000);
    lab.edge.begin_drain(lab.now);
    lab.edge.close_idle_upstreams(lab.now);
    for _ in 0..20 {
        lab.step(1);
    }
    assert_eq!(lab.client_state(c), tcp::State::Closed, "reset");
    assert_eq!(lab.edge.stats().drain_cut, 1);
}
