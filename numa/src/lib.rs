//! Where workers run: the machine's topology (hwloc), the NUMA node of a NIC,
//! the per-node placement plan, pinning, and node-local memory.

use std::path::Path;

mod plan;
mod topology;

pub use plan::{NodeTuning, Plan, PlanError, PlanRequest, WorkerPlacement, plan};
pub use topology::{Core, Machine, Node};

#[derive(Debug, thiserror::Error)]
pub enum NumaError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid CPU list {0:?}")]
    BadCpuList(String),
    #[error("CPU {0} is not online")]
    CpuOffline(usize),
    #[error("pinning the thread to CPU {0} failed")]
    Pin(usize),
    #[error("hwloc: {0}")]
    Hwloc(String),
    #[error("binding {len} bytes to NUMA node {node}: {source}")]
    Bind {
        len: usize,
        node: usize,
        source: std::io::Error,
    },
}

/// Binds `len` bytes at address `addr` (page aligned, not yet touched) to
/// `node`'s memory (mbind MPOL_BIND), so the pages fault in on the NIC's
/// node. The kernel checks the range; nothing is dereferenced here.
pub fn bind_to_node(addr: usize, len: usize, node: usize) -> Result<(), NumaError> {
    const MPOL_BIND: libc::c_int = 2;
    if node >= 64 {
        return Err(NumaError::Bind {
            len,
            node,
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "node beyond 63"),
        });
    }
    let mask: libc::c_ulong = 1 << node;
    // SAFETY: mbind(2) only changes the policy of the caller's range (the
    // kernel validates it); `mask` outlives the call and `maxnode` (64)
    // matches its bit width.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr as *mut libc::c_void,
            len,
            MPOL_BIND,
            &mask as *const libc::c_ulong,
            64 as libc::c_ulong,
            0 as libc::c_uint,
        )
    };
    if rc != 0 {
        return Err(NumaError::Bind {
            len,
            node,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Parses a CPU list such as `0-3,8,10-11`, keeping the given order (a
/// configured list is a placement order) and dropping repeats.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, NumaError> {
    let mut cpus = Vec::new();
    let bad = || NumaError::BadCpuList(s.to_string());
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().map_err(|_| bad())?;
                let b: usize = b.trim().parse().map_err(|_| bad())?;
                if b < a {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.trim().parse().map_err(|_| bad())?),
        }
    }
    let mut seen = std::collections::HashSet::new();
    cpus.retain(|c| seen.insert(*c));
    Ok(cpus)
}

fn read(path: &Path) -> Result<String, NumaError> {
    std::fs::read_to_string(path).map_err(|source| NumaError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// CPUs the kernel reports online.
pub fn online_cpus() -> Result<Vec<usize>, NumaError> {
    parse_cpu_list(&read(Path::new("/sys/devices/system/cpu/online"))?)
}

/// NUMA node of a network interface; `None` for virtual devices (veth) and
/// machines that report -1.
pub fn nic_node(iface: &str) -> Option<usize> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{iface}/device/numa_node")).ok()?;
    s.trim()
        .parse::<i64>()
        .ok()
        .and_then(|n| usize::try_from(n).ok())
}

/// CPUs of a NUMA node.
pub fn node_cpus(node: usize) -> Result<Vec<usize>, NumaError> {
    parse_cpu_list(&read(Path::new(&format!(
        "/sys/devices/system/node/node{node}/cpulist"
    )))?)
}

/// Picks a CPU per worker: the NIC's node first, wrapping around when there
/// are more workers than CPUs. `requested` (from config) wins when given.
pub fn plan_worker_cpus(
    workers: usize,
    requested: &[usize],
    iface: &str,
) -> Result<Vec<usize>, NumaError> {
    let online = online_cpus()?;
    if !requested.is_empty() {
        for &c in requested {
            if !online.contains(&c) {
                return Err(NumaError::CpuOffline(c));
            }
        }
        return Ok((0..workers)
            .map(|i| requested[i % requested.len()])
            .collect());
    }
    let local = nic_node(iface)
        .and_then(|n| node_cpus(n).ok())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| online.clone());
    Ok((0..workers).map(|i| local[i % local.len()]).collect())
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> Result<(), NumaError> {
    if core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        Ok(())
    } else {
        Err(NumaError::Pin(cpu))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n").unwrap(),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_cpu_list("1").unwrap(), vec![1]);
        assert_eq!(parse_cpu_list("3,1,3").unwrap(), vec![3, 1]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
    }

    #[test]
    fn plan_wraps_requested_cpus() {
        let online = online_cpus().unwrap();
        let plan = plan_worker_cpus(3, &online[..1], "lo").unwrap();
        assert_eq!(plan, vec![online[0]; 3]);
        assert!(plan_worker_cpus(1, &[100_000], "lo").is_err());
    }
}
