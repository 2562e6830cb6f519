//! A client connection whose segments start arriving on another queue is
//! still served, not reset. On a NIC that happens when the RSS table is
//! rewritten; on the lab's veth when the client's kernel picks a new flow
//! hash after a retransmission timeout (net.core.txrehash, on here). The
//! worker that receives a segment it holds no socket for asks the other
//! workers before answering with a RST.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use ferrogate_tests::{HttpConn, Lab, VIP, enter_netns, lab_test};

const CONNS: usize = 16;

/// What the client's kernel has counted as flow hashes re-picked after a
/// retransmission timeout (`TcpExtTcpTimeoutRehash`).
fn timeout_rehashes(lab: &Lab) -> u64 {
    let netstat = lab
        .exec("client", &["cat", "/proc/net/netstat"])
        .expect("read the client's netstat");
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "TcpTimeoutRehash")
        .map(|(_, v)| v.parse().unwrap())
        .expect("TcpTimeoutRehash in /proc/net/netstat")
}

fn connections_that_move_queues_are_served() {
    let lab = Lab::up(2);
    // The lab turns rehashing off (a NIC's RSS never moves a flow by the
    // sender's hash); this test wants the moves.
    lab.exec("client", &["sysctl", "-qw", "net.core.txrehash=1"])
        .expect("sysctl");
    let engine = lab.start_engine("af_xdp", 2);
    // The client's segments to the VIP are lost on the wire (an nftables
    // rule on the bridge) for a while: each connection times out, and its
    // kernel re-picks the flow hash, so the retransmission that finally
    // arrives may come in on the other queue.
    let hold = lab.state_dir().join("hold.nft");
    std::fs::write(
        &hold,
        format!(
            "table bridge fg_hold {{\n  chain hold {{\n    type filter hook forward priority 0;\n    \
             ip daddr {VIP} tcp dport 80 drop\n  }}\n}}\n"
        ),
    )
    .unwrap();

    let ready = Arc::new(Barrier::new(CONNS + 1));
    let held = Arc::new(Barrier::new(CONNS + 1));
    let ns = lab.ns("client");
    let clients: Vec<_> = (0..CONNS)
        .map(|c| {
            let (ns, ready, held) = (ns.clone(), ready.clone(), held.clone());
            std::thread::spawn(move || -> Result<(), String> {
                let served = (|| {
                    enter_netns(&ns).map_err(|e| e.to_string())?;
                    let mut conn = HttpConn::connect(&format!("{VIP}:80"))
                        .map_err(|e| format!("conn {c}: connect: {e}"))?;
                    let (status, _) = conn
                        .get("lab", &format!("/before/{c}"))
                        .map_err(|e| format!("conn {c} before: {e}"))?;
                    Ok::<_, String>((conn, status))
                })();
                // Every thread meets both barriers, also after a failure.
                ready.wait();
                held.wait();
                let (mut conn, status) = served?;
                if status != 200 {
                    return Err(format!("conn {c} before: status {status}"));
                }
                let path = format!("/after/{c}");
                let (status, body) = conn
                    .get("lab", &path)
                    .map_err(|e| format!("conn {c} after the hold: {e}"))?;
                if status != 200 || !body.contains(&format!("path={path}")) {
                    return Err(format!("conn {c} after the hold: {status} {body:?}"));
                }
                Ok(())
            })
        })
        .collect();
    ready.wait();
    let before = engine.stats();
    let rehashes_before = timeout_rehashes(&lab);
    lab.exec("wire", &["nft", "-f", &hold.display().to_string()])
        .expect("nft: hold the client's segments");
    held.wait();
    // Long enough for two timeouts (200 and 400 ms) and so two new hashes
    // each; the third retransmission (at ~1.4 s) gets through.
    std::thread::sleep(Duration::from_millis(1200));
    lab.exec("wire", &["nft", "delete", "table", "bridge", "fg_hold"])
        .expect("nft: release");
    let errors: Vec<String> = clients
        .into_iter()
        .filter_map(|h| h.join().expect("client thread").err())
        .collect();
    let after = engine.stats();
    let grew = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    assert!(
        errors.is_empty(),
        "connections failed after moving queues: {errors:?}\nstats: {after:?}\nlog:\n{}",
        engine.log()
    );
    let rehashes = timeout_rehashes(&lab) - rehashes_before;
    assert!(
        rehashes >= CONNS as u64,
        "the clients' kernels re-picked only {rehashes} flow hashes: the hold did not make them time out"
    );
    // With 16 connections each landing on a random queue after its last
    // new hash, some moved (all 16 staying put: 2^-16).
    assert!(
        grew("handoff_strays") > 0,
        "no segment reached a worker without its socket: {after:?}"
    );
    assert_eq!(grew("stack_rx_rst_no_socket"), 0, "{after:?}");
    assert_eq!(grew("handoff_dropped"), 0, "{after:?}");
}

#[test]
fn connections_whose_segments_move_to_another_queue_are_served_not_reset() {
    lab_test("flow_moves", connections_that_move_queues_are_served);
}
