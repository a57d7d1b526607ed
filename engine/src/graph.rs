//! The stage graph: stages are nodes, inputs are edges from producer to
//! consumer. Topological order, cycles, and the subgraphs that `--until`,
//! `--only` and `--from` select.

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, Walker};
use std::collections::BTreeSet;

#[derive(Debug, Clone)]
pub struct StageGraph {
    graph: DiGraph<usize, ()>,
}

impl StageGraph {
    /// `edges` are (producer, consumer) pairs of stage indices.
    pub fn new(stage_count: usize, edges: impl IntoIterator<Item = (usize, usize)>) -> Self {
        let mut graph = DiGraph::with_capacity(stage_count, 0);
        for i in 0..stage_count {
            graph.add_node(i);
        }
        for (from, to) in edges {
            graph.update_edge(NodeIndex::new(from), NodeIndex::new(to), ());
        }
        Self { graph }
    }

    fn len(&self) -> usize {
        self.graph.node_count()
    }

    /// Every cycle's stages in loop order (`[a, b, c]` for a -> b -> c -> a),
    /// one per strongly connected component.
    pub fn cycles(&self) -> Vec<Vec<usize>> {
        let mut cycles = Vec::new();
        for component in petgraph::algo::tarjan_scc(&self.graph) {
            let first = component[0];
            let self_loop = self.graph.contains_edge(first, first);
            if component.len() == 1 && !self_loop {
                continue;
            }
            let members: BTreeSet<NodeIndex> = component.iter().copied().collect();
            // Start from the lowest stage index so messages are stable.
            let start = *members.iter().next().unwrap();
            cycles.push(self.loop_through(start, &members));
        }
        cycles.sort();
        cycles
    }

    /// A simple loop from `start` back to itself inside one component.
    fn loop_through(&self, start: NodeIndex, members: &BTreeSet<NodeIndex>) -> Vec<usize> {
        if self.graph.contains_edge(start, start) {
            return vec![start.index()];
        }
        // Breadth-first search for the shortest path back to `start`.
        let mut previous: std::collections::HashMap<NodeIndex, NodeIndex> =
            std::collections::HashMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(node) = queue.pop_front() {
            let mut next: Vec<NodeIndex> = self
                .graph
                .neighbors_directed(node, Direction::Outgoing)
                .filter(|n| members.contains(n))
                .collect();
            next.sort();
            for n in next {
                if n == start {
                    let mut path = vec![node.index()];
                    let mut at = node;
                    while let Some(&p) = previous.get(&at) {
                        path.push(p.index());
                        at = p;
                    }
                    path.reverse();
                    return path;
                }
                if n != start && !previous.contains_key(&n) {
                    previous.insert(n, node);
                    queue.push_back(n);
                }
            }
        }
        vec![start.index()]
    }

    /// Stage indices in an order where producers come before consumers
    /// (recipe order among independent stages). The graph must be acyclic.
    pub fn topological_order(&self) -> Vec<usize> {
        let mut indegree: Vec<usize> = (0..self.len())
            .map(|i| {
                self.graph
                    .neighbors_directed(NodeIndex::new(i), Direction::Incoming)
                    .count()
            })
            .collect();
        let mut ready: BTreeSet<usize> = (0..self.len()).filter(|&i| indegree[i] == 0).collect();
        let mut order = Vec::with_capacity(self.len());
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for n in self.consumers(i) {
                indegree[n] -= 1;
                if indegree[n] == 0 {
                    ready.insert(n);
                }
            }
        }
        order
    }

    /// Stages that read stage `i`'s output directly.
    pub fn consumers(&self, i: usize) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .graph
            .neighbors_directed(NodeIndex::new(i), Direction::Outgoing)
            .map(NodeIndex::index)
            .collect();
        v.sort();
        v
    }

    /// Stages whose output stage `i` reads directly.
    pub fn producers(&self, i: usize) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .graph
            .neighbors_directed(NodeIndex::new(i), Direction::Incoming)
            .map(NodeIndex::index)
            .collect();
        v.sort();
        v
    }

    /// `i` and every stage it depends on, transitively.
    pub fn ancestors_of(&self, i: usize) -> BTreeSet<usize> {
        let reversed = petgraph::visit::Reversed(&self.graph);
        Dfs::new(reversed, NodeIndex::new(i))
            .iter(reversed)
            .map(NodeIndex::index)
            .collect()
    }

    /// `i` and every stage that depends on it, transitively.
    pub fn descendants_of(&self, i: usize) -> BTreeSet<usize> {
        Dfs::new(&self.graph, NodeIndex::new(i))
            .iter(&self.graph)
            .map(NodeIndex::index)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_whole_loop() {
        // 0 -> 1 -> 2 -> 0, and 3 independent
        let g = StageGraph::new(4, [(0, 1), (1, 2), (2, 0), (2, 3)]);
        assert_eq!(g.cycles(), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn self_loops_are_cycles() {
        let g = StageGraph::new(2, [(1, 1)]);
        assert_eq!(g.cycles(), vec![vec![1]]);
    }

    #[test]
    fn topological_order_puts_producers_first() {
        let g = StageGraph::new(4, [(3, 1), (1, 0), (2, 0)]);
        let order = g.topological_order();
        let pos = |i| order.iter().position(|&x| x == i).unwrap();
        assert!(pos(3) < pos(1) && pos(1) < pos(0) && pos(2) < pos(0));
        assert_eq!(g.ancestors_of(0), BTreeSet::from([0, 1, 2, 3]));
        assert_eq!(g.descendants_of(3), BTreeSet::from([3, 1, 0]));
    }
}
