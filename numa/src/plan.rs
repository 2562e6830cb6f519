//! Worker placement: one worker per NIC queue, each on its own physical core
//! of the NIC's NUMA node, its packet memory on that node.

use std::collections::BTreeMap;

use crate::topology::Machine;

/// Per-node settings from the configuration (`[numa.node.N]`); `None`
/// fields are filled from the topology and the engine's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeTuning {
    /// Logical CPUs the node's workers may use, in order.
    pub cores: Option<Vec<usize>>,
    pub queues: Option<u32>,
    pub umem_frames: Option<u32>,
    pub frame_size: Option<u32>,
    pub ring_size: Option<u32>,
    pub batch_size: Option<usize>,
    pub hugepages: Option<bool>,
    pub polling: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PlanRequest<'a> {
    pub queues: u32,
    /// The NIC's NUMA node, if the machine reports one.
    pub nic_node: Option<usize>,
    pub tuning: &'a BTreeMap<usize, NodeTuning>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerPlacement {
    pub queue: u32,
    pub cpu: usize,
    pub node: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The node the NIC (and so the workers' memory) belongs to.
    pub node: usize,
    pub workers: Vec<WorkerPlacement>,
    /// Why the plan is not ideal (shown to the operator, not fatal).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("numa.node.{node}: no such NUMA node (the machine has {have:?})")]
    NoSuchNode { node: usize, have: Vec<usize> },
    #[error("numa.node.{node}.cores: CPU {cpu} does not exist (online: {online})")]
    NoSuchCpu {
        node: usize,
        cpu: usize,
        online: String,
    },
    #[error(
        "numa.node.{node}.cores: CPUs {a} and {b} are SMT siblings of one core; two workers \
         would share it (list one of them)"
    )]
    SmtShared { node: usize, a: usize, b: usize },
    #[error("numa.node.{node}.cores: empty list")]
    NoCores { node: usize },
    #[error("queues must be at least 1")]
    NoQueues,
}

impl Plan {
    /// A human-readable plan for `ferrogate numa`.
    pub fn render(&self) -> String {
        let mut s = format!("NIC node {}\n", self.node);
        for w in &self.workers {
            s.push_str(&format!(
                "  queue {} -> worker on cpu {} (node {})\n",
                w.queue, w.cpu, w.node
            ));
        }
        for w in &self.warnings {
            s.push_str(&format!("  warning: {w}\n"));
        }
        s
    }
}

fn compact(cpus: impl Iterator<Item = usize>) -> String {
    let v: Vec<String> = cpus.map(|c| c.to_string()).collect();
    v.join(",")
}

pub fn plan(machine: &Machine, req: &PlanRequest<'_>) -> Result<Plan, PlanError> {
    if req.queues == 0 {
        return Err(PlanError::NoQueues);
    }
    for &n in req.tuning.keys() {
        if machine.node(n).is_none() {
            return Err(PlanError::NoSuchNode {
                node: n,
                have: machine.nodes.iter().map(|x| x.id).collect(),
            });
        }
    }
    let mut warnings = Vec::new();
    let node_id = match req.nic_node {
        Some(n) if machine.node(n).is_some() => n,
        Some(n) => {
            warnings.push(format!(
                "the NIC reports node {n}, which hwloc does not know"
            ));
            machine.nodes[0].id
        }
        None => machine.nodes[0].id,
    };
    let node = machine.node(node_id).expect("chosen node exists");
    let tuning = req.tuning.get(&node_id);
    let cpus: Vec<usize> = match tuning.and_then(|t| t.cores.clone()) {
        Some(list) => {
            if list.is_empty() {
                return Err(PlanError::NoCores { node: node_id });
            }
            for (i, &c) in list.iter().enumerate() {
                let Some((n, core)) = machine.locate(c) else {
                    return Err(PlanError::NoSuchCpu {
                        node: node_id,
                        cpu: c,
                        online: compact(machine.cpus()),
                    });
                };
                if n.id != node_id {
                    warnings.push(format!(
                        "cpu {c} is on node {} but the NIC is on node {node_id}: every packet crosses the interconnect",
                        n.id
                    ));
                }
                if let Some(&other) = list[..i].iter().find(|o| core.pus.contains(o)) {
                    return Err(PlanError::SmtShared {
                        node: node_id,
                        a: other,
                        b: c,
                    });
                }
            }
            list
        }
        // One worker per physical core: the primary PU of each.
        None => node
            .cores
            .iter()
            .filter_map(|c| c.pus.first().copied())
            .collect(),
    };
    let cpus = if cpus.is_empty() {
        warnings.push(format!("node {node_id} has no CPUs; using every CPU"));
        machine.cpus().collect()
    } else {
        cpus
    };
    if req.queues as usize > cpus.len() {
        warnings.push(format!(
            "{} workers share {} cores: they will preempt each other",
            req.queues,
            cpus.len()
        ));
    }
    let workers = (0..req.queues)
        .map(|q| {
            let cpu = cpus[q as usize % cpus.len()];
            let node = machine.locate(cpu).map_or(node_id, |(n, _)| n.id);
            WorkerPlacement {
                queue: q,
                cpu,
                node,
            }
        })
        .collect();
    Ok(Plan {
        node: node_id,
        workers,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_nodes() -> Machine {
        // 2 packages x 1 node x 4 cores x 2 PUs: CPUs 0-7 on node 0, 8-15 on node 1.
        Machine::synthetic("pack:2 numa:1 core:4 pu:2").unwrap()
    }

    fn four_nodes() -> Machine {
        Machine::synthetic("pack:1 numa:4 core:2 pu:1").unwrap()
    }

    fn req(
        queues: u32,
        nic: Option<usize>,
        tuning: &BTreeMap<usize, NodeTuning>,
    ) -> PlanRequest<'_> {
        PlanRequest {
            queues,
            nic_node: nic,
            tuning,
        }
    }

    #[test]
    fn synthetic_topologies_have_the_described_shape() {
        let m = two_nodes();
        assert_eq!(m.nodes.len(), 2);
        assert!(m.nodes.iter().all(|n| n.cores.len() == 4));
        assert!(
            m.nodes
                .iter()
                .all(|n| n.cores.iter().all(|c| c.pus.len() == 2))
        );
        assert_eq!(m.cpus().count(), 16);
        let m = four_nodes();
        assert_eq!(m.nodes.len(), 4);
        assert_eq!(m.cpus().count(), 8);
    }

    #[test]
    fn workers_go_to_distinct_physical_cores_of_the_nic_node() {
        let m = two_nodes();
        let none = BTreeMap::new();
        let p = plan(&m, &req(4, Some(1), &none)).unwrap();
        assert_eq!(p.node, 1);
        let cpus: Vec<_> = p.workers.iter().map(|w| w.cpu).collect();
        // one PU per core, never two siblings
        for (i, &c) in cpus.iter().enumerate() {
            let (n, core) = m.locate(c).unwrap();
            assert_eq!(n.id, 1);
            assert!(cpus[..i].iter().all(|o| !core.pus.contains(o)));
        }
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn four_node_machine_places_on_the_nic_node_and_warns_when_oversubscribed() {
        let m = four_nodes();
        let none = BTreeMap::new();
        let p = plan(&m, &req(3, Some(2), &none)).unwrap();
        assert!(p.workers.iter().all(|w| w.node == 2));
        assert_eq!(p.workers.len(), 3);
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("3 workers share 2 cores"))
        );
    }

    #[test]
    fn per_node_cores_are_validated() {
        let m = two_nodes();
        let mut t = BTreeMap::new();
        t.insert(
            0,
            NodeTuning {
                cores: Some(vec![0, 1]),
                ..Default::default()
            },
        );
        let e = plan(&m, &req(2, Some(0), &t)).unwrap_err();
        assert_eq!(
            e,
            PlanError::SmtShared {
                node: 0,
                a: 0,
                b: 1
            }
        );
        assert!(
            e.to_string()
                .starts_with("numa.node.0.cores: CPUs 0 and 1 are SMT siblings")
        );
        t.insert(
            0,
            NodeTuning {
                cores: Some(vec![0, 99]),
                ..Default::default()
            },
        );
        assert!(matches!(
            plan(&m, &req(2, Some(0), &t)),
            Err(PlanError::NoSuchCpu { cpu: 99, .. })
        ));
        t.insert(
            0,
            NodeTuning {
                cores: Some(vec![0, 8]),
                ..Default::default()
            },
        );
        let p = plan(&m, &req(2, Some(0), &t)).unwrap();
        assert!(
            p.warnings.iter().any(|w| w.contains("cpu 8 is on node 1")),
            "{:?}",
            p.warnings
        );
        let mut t = BTreeMap::new();
        t.insert(7, NodeTuning::default());
        assert!(matches!(
            plan(&m, &req(1, None, &t)),
            Err(PlanError::NoSuchNode { node: 7, .. })
        ));
    }
}
