//! The machine as the planner sees it: NUMA nodes, their physical cores, and
//! each core's processing units (SMT siblings), discovered through hwloc
//! (`hwlocality`; `hwloc2` panics on hwloc 2.9, see PLATFORM.md) or built from
//! a synthetic description for tests.

use hwlocality::Topology;
use hwlocality::object::types::ObjectType;

use crate::NumaError;

/// One physical core: its logical CPUs (OS numbering), primary first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Core {
    pub pus: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: usize,
    pub cores: Vec<Core>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub nodes: Vec<Node>,
}

impl Machine {
    /// The running machine.
    pub fn discover() -> Result<Machine, NumaError> {
        let topo = Topology::new().map_err(|e| NumaError::Hwloc(e.to_string()))?;
        Ok(from_hwloc(&topo))
    }

    /// A made-up machine, e.g. `"pack:2 numa:1 core:4 pu:2"` (hwloc's
    /// synthetic syntax).
    pub fn synthetic(description: &str) -> Result<Machine, NumaError> {
        let topo = Topology::builder()
            .from_synthetic(description)
            .map_err(|e| NumaError::Hwloc(e.to_string()))?
            .build()
            .map_err(|e| NumaError::Hwloc(e.to_string()))?;
        Ok(from_hwloc(&topo))
    }

    pub fn node(&self, id: usize) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The node and core holding logical CPU `cpu`.
    pub fn locate(&self, cpu: usize) -> Option<(&Node, &Core)> {
        self.nodes.iter().find_map(|n| {
            n.cores
                .iter()
                .find(|c| c.pus.contains(&cpu))
                .map(|c| (n, c))
        })
    }

    pub fn cpus(&self) -> impl Iterator<Item = usize> + '_ {
        self.nodes
            .iter()
            .flat_map(|n| n.cores.iter().flat_map(|c| c.pus.iter().copied()))
    }
}

fn from_hwloc(topo: &Topology) -> Machine {
    let cores: Vec<_> = topo.objects_with_type(ObjectType::Core).collect();
    let mut nodes = Vec::new();
    for numa in topo.objects_with_type(ObjectType::NUMANode) {
        let id = numa.os_index().unwrap_or(nodes.len());
        let Some(node_cpus) = numa.cpuset() else {
            continue;
        };
        let mut node = Node {
            id,
            cores: Vec::new(),
        };
        for core in &cores {
            let Some(cs) = core.cpuset() else {
                continue;
            };
            if !node_cpus.includes(&*cs) {
                continue;
            }
            let pus: Vec<usize> = cs.iter_set().map(usize::from).collect();
            if !pus.is_empty() {
                node.cores.push(Core { pus });
            }
        }
        nodes.push(node);
    }
    if nodes.is_empty() || nodes.iter().all(|n| n.cores.is_empty()) {
        // No NUMA information: one node with every core.
        let cores = cores
            .iter()
            .filter_map(|c| c.cpuset())
            .map(|cs| Core {
                pus: cs.iter_set().map(usize::from).collect(),
            })
            .collect();
        nodes = vec![Node { id: 0, cores }];
    }
    Machine { nodes }
}
