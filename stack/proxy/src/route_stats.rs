//! Per-route counters. A worker owns its own and updates them with plain
//! integer adds; readers sum copies across workers with `add` and print
//! `name value` lines like the engine's other counters.

use std::fmt::Write;

use crate::lb::{LatencyHistogram, render_classes, status_class};
use crate::route::RouteTable;

/// Counters of one route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteStats {
    pub requests: u64,
    /// Responses by status class: index 1 = 1xx ... 5 = 5xx.
    pub responses_by_class: [u64; 6],
    /// Request start → response head sent to the client.
    pub latency: LatencyHistogram,
    pub retries: u64,
    /// Requests answered by the proxy itself for an upstream failure
    /// (502/503/504).
    pub upstream_errors: u64,
}

impl RouteStats {
    pub fn count_response(&mut self, status: u16, latency_us: u64) {
        status_class(&mut self.responses_by_class, status);
        self.latency.record(latency_us);
    }

    pub fn add(&mut self, o: &RouteStats) {
        self.requests += o.requests;
        for (a, b) in self.responses_by_class.iter_mut().zip(o.responses_by_class) {
            *a += b;
        }
        self.latency.add(&o.latency);
        self.retries += o.retries;
        self.upstream_errors += o.upstream_errors;
    }

    /// `route_<name>_requests N` and friends.
    pub fn render(&self, name: &str, out: &mut String) {
        let p = format!("route_{name}");
        let _ = writeln!(out, "{p}_requests {}", self.requests);
        render_classes(&p, &self.responses_by_class, out);
        let _ = writeln!(out, "{p}_retries {}", self.retries);
        let _ = writeln!(out, "{p}_upstream_errors {}", self.upstream_errors);
        self.latency.render(&p, out);
    }
}

/// Requests a rate limit counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitCounts {
    pub allowed: u64,
    /// Answered 429.
    pub limited: u64,
    /// Sources handed to the XDP deny set.
    pub escalated: u64,
}

impl LimitCounts {
    fn add(&mut self, o: &LimitCounts) {
        self.allowed += o.allowed;
        self.limited += o.limited;
        self.escalated += o.escalated;
    }
}

/// One worker's route counters, slot `Route::id` of its current snapshot.
#[derive(Debug, Clone, Default)]
pub struct RouteCounters {
    pub routes: Vec<(String, RouteStats)>,
    /// Requests each L7 rule matched, slot `Rule::id`.
    pub rules: Vec<(String, u64)>,
    /// What each L7 rate limit did, slot `Limit::id`.
    pub limits: Vec<(String, LimitCounts)>,
    /// Takes the counts of a request routed by a snapshot a reload has
    /// since replaced with fewer routes (its id is past the end).
    stale: RouteStats,
}

impl RouteCounters {
    /// Re-aligns with a new snapshot; counters of routes that keep their
    /// name are carried over, others start at zero (and removed ones go).
    pub fn sync(&mut self, table: &RouteTable) {
        let mut old = std::mem::take(&mut self.routes);
        self.routes = table
            .routes()
            .map(|r| {
                let prev = old
                    .iter_mut()
                    .find(|(n, _)| *n == r.name)
                    .map(|(_, s)| std::mem::take(s))
                    .unwrap_or_default();
                (r.name.clone(), prev)
            })
            .collect();
        let mut old = std::mem::take(&mut self.rules);
        self.rules = table
            .rules()
            .map(|r| {
                let prev = old
                    .iter_mut()
                    .find(|(n, _)| *n == r.name)
                    .map_or(0, |(_, hits)| std::mem::take(hits));
                (r.name.clone(), prev)
            })
            .collect();
        let mut old = std::mem::take(&mut self.limits);
        self.limits = table
            .limits
            .iter()
            .map(|l| {
                let prev = old
                    .iter_mut()
                    .find(|(n, _)| **n == *l.name)
                    .map(|(_, c)| std::mem::take(c))
                    .unwrap_or_default();
                (l.name.to_string(), prev)
            })
            .collect();
    }

    /// The counters of limit `id` (`Limit::id`); a limit a reload removed
    /// counts nowhere.
    pub fn limit_mut(&mut self, id: usize) -> Option<&mut LimitCounts> {
        self.limits.get_mut(id).map(|(_, c)| c)
    }

    /// Counts a request rule `id` (`Rule::id`) matched; O(1).
    pub fn rule_hit(&mut self, id: usize) {
        if let Some((_, hits)) = self.rules.get_mut(id) {
            *hits += 1;
        }
    }

    /// Takes back a hit of rule `id` (its list ran again for the same
    /// request with other claims); O(1).
    pub fn rule_unhit(&mut self, id: usize) {
        if let Some((_, hits)) = self.rules.get_mut(id) {
            *hits = hits.saturating_sub(1);
        }
    }

    /// The counters of route `id` (`Route::id`); O(1).
    pub fn get_mut(&mut self, id: usize) -> &mut RouteStats {
        if id < self.routes.len() {
            &mut self.routes[id].1
        } else {
            &mut self.stale
        }
    }

    /// Sums another worker's counters in, matching routes by name.
    pub fn add(&mut self, o: &RouteCounters) {
        for (name, s) in &o.routes {
            match self.routes.iter_mut().find(|(n, _)| n == name) {
                Some((_, mine)) => mine.add(s),
                None => self.routes.push((name.clone(), *s)),
            }
        }
        for (name, hits) in &o.rules {
            match self.rules.iter_mut().find(|(n, _)| n == name) {
                Some((_, mine)) => *mine += hits,
                None => self.rules.push((name.clone(), *hits)),
            }
        }
        for (name, c) in &o.limits {
            match self.limits.iter_mut().find(|(n, _)| n == name) {
                Some((_, mine)) => mine.add(c),
                None => self.limits.push((name.clone(), *c)),
            }
        }
    }

    pub fn render(&self, out: &mut String) {
        for (name, s) in &self.routes {
            s.render(name, out);
        }
        for (name, hits) in &self.rules {
            let _ = writeln!(out, "rule_{name}_hits {hits}");
        }
        for (name, c) in &self.limits {
            let _ = writeln!(out, "limit_{name}_allowed {}", c.allowed);
            let _ = writeln!(out, "limit_{name}_limited {}", c.limited);
            let _ = writeln!(out, "limit_{name}_escalated {}", c.escalated);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::route::{DirectResponse, Listener, Route, RouteAction};

    #[test]
    fn route_counters_sum_across_workers_and_render_by_name() {
        let resp = RouteAction::Respond(Arc::new(DirectResponse {
            status: 200,
            content_type: "text/plain".into(),
            body: vec![],
            location: None,
            retry_after: None,
            www_authenticate: None,
        }));
        let table = RouteTable::new(
            1,
            vec![Listener::new(
                80,
                vec![Route::new("api", resp.clone()), Route::new("web", resp)],
            )],
            vec![],
        );
        let mut w1 = RouteCounters::default();
        w1.sync(&table);
        let mut w2 = w1.clone();
        w1.get_mut(0).requests += 2;
        w1.get_mut(0).count_response(200, 100);
        w2.get_mut(0).requests += 1;
        w2.get_mut(0).count_response(503, 5_000);
        w2.get_mut(1).retries += 1;
        let mut total = RouteCounters::default();
        total.add(&w1);
        total.add(&w2);
        let mut out = String::new();
        total.render(&mut out);
        assert!(out.contains("route_api_requests 3\n"), "{out}");
        assert!(out.contains("route_api_responses_2xx 1\n"));
        assert!(out.contains("route_api_responses_5xx 1\n"));
        assert!(out.contains("route_api_latency_us_lt_128 1\n"));
        assert!(out.contains("route_api_latency_us_count 2\n"));
        assert!(out.contains("route_web_retries 1\n"));
        // A reload keeps counters of routes that keep their name.
        w1.sync(&table);
        assert_eq!(w1.get_mut(0).requests, 2);
    }
}
