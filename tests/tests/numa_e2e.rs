//! Placement and polling in the lab: the plan the engine logs is the
//! affinity its worker threads really have, the UMEM sits on hugepages when
//! asked, and idle workers cost next to nothing in adaptive mode.

use std::time::{Duration, Instant};

use ferrogate_tests::{HttpConn, Lab, VIP, lab_test};

/// (thread name, Cpus_allowed_list) of every thread of `pid`.
fn thread_affinity(pid: i32) -> Vec<(String, String)> {
    let mut out = vec![];
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or("")
            .trim()
            .to_string();
        out.push((comm.trim().to_string(), allowed));
    }
    out
}

/// utime + stime of `pid` in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn worker_threads_run_where_the_plan_says() {
    lab_test("placement", || {
        let lab = Lab::up(2);
        // Reverse order: queue 0 on CPU 1, queue 1 on CPU 0.
        let cfg = lab.config_with("placement.toml", "[numa.node.0]\ncores = \"1,0\"\n");
        let engine = lab.start_engine_with(&cfg, "af_xdp", 2);
        let log = engine.log();
        for (q, cpu) in [(0, 1), (1, 0)] {
            assert!(
                log.contains(&format!("worker placement queue={q} cpu={cpu} node=0")),
                "{log}"
            );
        }
        let threads = thread_affinity(engine.pid());
        for (q, cpu) in [(0, "1"), (1, "0")] {
            let name = format!("fg-worker-{q}");
            let t = threads
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("{name} in {threads:?}"));
            assert_eq!(t.1, cpu, "{name} pinned to {}", t.1);
        }
        assert!(
            lab.curl(&format!("http://{VIP}/placed"))
                .unwrap()
                .contains("path=/placed")
        );
    });
}

#[test]
fn bad_numa_tuning_is_refused_with_the_field_named() {
    lab_test("numa_errors", || {
        let lab = Lab::up(1);
        let cfg = lab.config_with(
            "bad.toml",
            "[numa.node.0]\ncores = \"0-1x\"\numem_frames = 1000\npolling = \"sometimes\"\n",
        );
        let out = std::process::Command::new(ferrogate_tests::ferrogate_bin())
            .arg("check")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        for field in [
            "numa.node.0.cores",
            "numa.node.0.umem_frames",
            "numa.node.0.polling",
        ] {
            assert!(err.contains(field), "{field} missing in:\n{err}");
        }
        let cfg = lab.config_with("nocpu.toml", "[numa.node.0]\ncores = \"0,4000\"\n");
        let out = std::process::Command::new(ferrogate_tests::ferrogate_bin())
            .args(["run", "--config"])
            .arg(&cfg)
            .args([
                "--netns",
                &lab.ns("edge"),
                "--queues",
                "1",
                "--duration",
                "1",
            ])
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("numa.node.0.cores: CPU 4000 does not exist"),
            "{err}"
        );
    });
}

#[test]
fn umem_is_on_hugepages_when_asked() {
    lab_test("hugepages", || {
        let lab = Lab::up(1);
        let path = "/proc/sys/vm/nr_hugepages";
        let before = std::fs::read_to_string(path).unwrap().trim().to_string();
        std::fs::write(path, "64").unwrap();
        struct Restore(&'static str, String);
        impl Drop for Restore {
            fn drop(&mut self) {
                let _ = std::fs::write(self.0, &self.1);
            }
        }
        let _restore = Restore(path, before);
        let cfg = lab.config_with(
            "huge.toml",
            "[numa.node.0]\nhugepages = true\numem_frames = 4096\n",
        );
        let engine = lab.start_engine_with(&cfg, "af_xdp", 1);
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", engine.pid())).unwrap();
        // A mapping of >= 8 MiB (4096 frames x 2 KiB) backed by 2 MB pages.
        let huge = smaps.split("\n").collect::<Vec<_>>();
        let mut found = false;
        let mut size_kib = 0u64;
        for l in huge {
            if let Some(v) = l.strip_prefix("Size:") {
                size_kib = v.split_whitespace().next().unwrap().parse().unwrap();
            }
            if l.starts_with("KernelPageSize:") && l.contains("2048 kB") && size_kib >= 8192 {
                found = true;
            }
        }
        assert!(found, "no 2 MB-page mapping of the UMEM in smaps");
        assert!(
            lab.curl(&format!("http://{VIP}/huge"))
                .unwrap()
                .contains("path=/huge")
        );
    });
}

/// p50 and p99 of request latency at ~100 req/s over one keep-alive connection.
fn latency_at_100rps(lab: &Lab) -> (Duration, Duration) {
    lab.in_client(|| {
        let mut c = HttpConn::connect(&format!("{VIP}:80")).unwrap();
        let mut v = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            assert_eq!(c.get("lab", "/lat").unwrap().0, 200);
            v.push(t.elapsed());
            std::thread::sleep(Duration::from_millis(10));
        }
        v.sort();
        (v[100], v[198])
    })
}

#[test]
fn adaptive_workers_idle_near_zero_cpu_and_latency_is_reported_per_mode() {
    lab_test("polling", || {
        let lab = Lab::up(2);
        let mut results = vec![];
        for mode in ["busy", "adaptive", "interrupt"] {
            let cfg = lab.config_with(
                &format!("{mode}.toml"),
                &format!("[numa.node.0]\npolling = \"{mode}\"\n"),
            );
            let mut engine = lab.start_engine_with(&cfg, "af_xdp", 2);
            std::thread::sleep(Duration::from_millis(500));
            let t0 = cpu_ticks(engine.pid());
            std::thread::sleep(Duration::from_secs(2));
            // ticks are 1/100 s: CPU cores used while idle
            let idle_cores = (cpu_ticks(engine.pid()) - t0) as f64 / 100.0 / 2.0;
            let (p50, p99) = latency_at_100rps(&lab);
            results.push((mode, idle_cores, p50, p99));
            assert!(engine.stop().unwrap().success());
        }
        for (mode, idle, p50, p99) in &results {
            eprintln!(
                "polling {mode:9}: idle CPU {idle:.3} cores, latency at 100 req/s p50 {p50:?} p99 {p99:?}"
            );
        }
        let idle = |m: &str| results.iter().find(|r| r.0 == m).unwrap().1;
        // Relative where the machine's load can move the figure: busy
        // polling burns what it is given, adaptive and interrupt next to none.
        assert!(
            idle("busy") > 0.5 && idle("busy") > 4.0 * idle("adaptive"),
            "busy polling should use its cores: busy {} adaptive {}",
            idle("busy"),
            idle("adaptive")
        );
        assert!(
            idle("adaptive") < 0.25,
            "adaptive idle CPU {} cores",
            idle("adaptive")
        );
        assert!(idle("interrupt") < idle("adaptive") + 0.1);
    });
}
