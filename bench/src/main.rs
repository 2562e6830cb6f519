//! ferrogate-bench: side-by-side benchmarks against kernel baselines.
//!
//! The harness (scenarios, generator, reports) is issue #3. Until it lands,
//! `ferrogate lab demo` prints an alternating ferrogate/nginx wrk comparison.

fn main() {
    eprintln!(
        "ferrogate-bench: no scenarios yet (issue #3); use `ferrogate lab demo` for a one-off ferrogate vs nginx comparison"
    );
    std::process::exit(2);
}
