//! Reports: every sample with its exact command, median and min–max per
//! contender, ratios against a baseline contender computed per round, as
//! JSON + Markdown in `bench/results/`, and SVG bar charts (plotters, SVG
//! backend only: no font or freetype system dependencies).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use crate::measure::Metrics;

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub variant: String,
    pub contender: String,
    pub round: usize,
    pub metrics: Metrics,
    pub commands: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn stat(v: &[f64]) -> Option<Stat> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some(Stat {
        median,
        min: s[0],
        max: s[n - 1],
        n,
    })
}

/// How a scenario's table looks: (metric key, column label, scale factor).
#[derive(Debug, Clone, Serialize)]
pub struct Column {
    pub key: String,
    pub label: String,
    pub scale: f64,
}

pub fn col(key: &str, label: &str, scale: f64) -> Column {
    Column {
        key: key.into(),
        label: label.into(),
        scale,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub key: String,
    pub label: String,
    pub baseline: String,
}

/// A variant's own table, for scenarios whose variants measure different
/// things (e.g. Gbit/s and connections/s).
#[derive(Debug, Clone, Serialize)]
pub struct Layout {
    pub columns: Vec<Column>,
    pub ratios: Vec<Ratio>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub timestamp: String,
    pub meta: BTreeMap<String, String>,
    pub settings: BTreeMap<String, String>,
    pub columns: Vec<Column>,
    pub ratios: Vec<Ratio>,
    /// Variant -> its own columns and ratios (instead of the two above).
    pub layouts: BTreeMap<String, Layout>,
    /// Charts: (metric key, title).
    pub plots: Vec<(String, String)>,
    pub samples: Vec<Sample>,
    /// Contender -> why it could not run (e.g. a feature not built yet).
    pub unavailable: BTreeMap<String, String>,
    pub notes: Vec<String>,
    pub summary: Vec<SummaryRow>,
    /// Rows over time (e.g. the soak's samples), in the JSON as they are.
    pub timeseries: Vec<Metrics>,
    /// Markdown sections after the tables: (title, body).
    pub sections: Vec<(String, String)>,
    /// Line charts over time, stacked in one `<scenario>-<ts>.svg`.
    pub timeline: Vec<Panel>,
}

/// One panel of a timeline chart: named series of (x, y) points.
#[derive(Debug, Clone, Serialize)]
pub struct Panel {
    pub title: String,
    pub y_desc: String,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SummaryRow {
    pub variant: String,
    pub contender: String,
    pub stats: BTreeMap<String, Stat>,
    pub ratios: BTreeMap<String, Stat>,
}

impl Report {
    pub fn new(scenario: &str, meta: BTreeMap<String, String>) -> Report {
        Report {
            scenario: scenario.into(),
            timestamp: timestamp(),
            meta,
            settings: BTreeMap::new(),
            columns: Vec::new(),
            ratios: Vec::new(),
            layouts: BTreeMap::new(),
            plots: Vec::new(),
            samples: Vec::new(),
            unavailable: BTreeMap::new(),
            notes: Vec::new(),
            summary: Vec::new(),
            timeseries: Vec::new(),
            sections: Vec::new(),
            timeline: Vec::new(),
        }
    }

    fn columns_for(&self, variant: &str) -> &[Column] {
        self.layouts
            .get(variant)
            .map_or(&self.columns, |l| &l.columns)
    }

    fn ratios_for(&self, variant: &str) -> &[Ratio] {
        self.layouts
            .get(variant)
            .map_or(&self.ratios, |l| &l.ratios)
    }

    fn variants(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for s in &self.samples {
            if !v.contains(&s.variant) {
                v.push(s.variant.clone());
            }
        }
        v
    }

    fn contenders(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for s in &self.samples {
            if !v.contains(&s.contender) {
                v.push(s.contender.clone());
            }
        }
        v
    }

    pub fn summarize(&mut self) {
        self.summary.clear();
        for variant in self.variants() {
            // A contender that did not take part in a variant (e.g. no
            // UDP proxying) gets no row there; one that failed does.
            for c in self.contenders().into_iter().filter(|c| {
                self.samples
                    .iter()
                    .any(|s| s.variant == variant && &s.contender == c)
            }) {
                let ok: Vec<&Sample> = self
                    .samples
                    .iter()
                    .filter(|s| s.variant == variant && s.contender == c && s.error.is_none())
                    .collect();
                let mut keys = BTreeSet::new();
                for s in &ok {
                    keys.extend(s.metrics.keys().cloned());
                }
                let mut stats = BTreeMap::new();
                for k in keys {
                    let v: Vec<f64> = ok
                        .iter()
                        .filter_map(|s| s.metrics.get(&k).copied())
                        .collect();
                    if let Some(st) = stat(&v) {
                        stats.insert(k, st);
                    }
                }
                let mut ratios = BTreeMap::new();
                for r in self.ratios_for(&variant) {
                    if r.baseline == c {
                        continue;
                    }
                    let v: Vec<f64> = ok
                        .iter()
                        .filter_map(|s| {
                            let a = s.metrics.get(&r.key)?;
                            let b = self
                                .samples
                                .iter()
                                .find(|b| {
                                    b.variant == variant
                                        && b.contender == r.baseline
                                        && b.round == s.round
                                        && b.error.is_none()
                                })?
                                .metrics
                                .get(&r.key)?;
                            (*b != 0.0).then(|| a / b)
                        })
                        .collect();
                    if let Some(st) = stat(&v) {
                        ratios.insert(r.label.clone(), st);
                    }
                }
                self.summary.push(SummaryRow {
                    variant: variant.clone(),
                    contender: c,
                    stats,
                    ratios,
                });
            }
        }
    }

    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# ferrogate-bench: {} ({})\n\n",
            self.scenario, self.timestamp
        );
        s.push_str("Median over rounds, (min–max) in brackets; ratios are computed per round against the baseline, then summarized.\n\n");
        for variant in self.variants() {
            let (columns, ratios) = (self.columns_for(&variant), self.ratios_for(&variant));
            s.push_str(&format!("## {variant}\n\n| contender |"));
            for c in columns {
                s.push_str(&format!(" {} |", c.label));
            }
            for r in ratios {
                s.push_str(&format!(" {} |", r.label));
            }
            s.push_str("\n|---|");
            for _ in 0..columns.len() + ratios.len() {
                s.push_str("---|");
            }
            s.push('\n');
            for row in self.summary.iter().filter(|r| r.variant == variant) {
                s.push_str(&format!("| {} |", row.contender));
                for c in columns {
                    match row.stats.get(&c.key) {
                        Some(st) => s.push_str(&format!(
                            " {} ({}–{}) |",
                            fmt(st.median * c.scale),
                            fmt(st.min * c.scale),
                            fmt(st.max * c.scale)
                        )),
                        None => s.push_str(" – |"),
                    }
                }
                for r in ratios {
                    match row.ratios.get(&r.label) {
                        Some(st) => s.push_str(&format!(
                            " {:.2} ({:.2}–{:.2}) |",
                            st.median, st.min, st.max
                        )),
                        None => s.push_str(" – |"),
                    }
                }
                s.push('\n');
            }
            s.push('\n');
        }
        for (title, body) in &self.sections {
            s.push_str(&format!("## {title}\n\n{body}\n"));
        }
        if !self.unavailable.is_empty() {
            s.push_str("## Not measured\n\n");
            for (k, v) in &self.unavailable {
                s.push_str(&format!("- **{k}**: {v}\n"));
            }
            s.push('\n');
        }
        let errs: Vec<&Sample> = self.samples.iter().filter(|x| x.error.is_some()).collect();
        if !errs.is_empty() {
            s.push_str("## Errors\n\n");
            for e in errs {
                s.push_str(&format!(
                    "- round {} {} {}: {}\n",
                    e.round,
                    e.variant,
                    e.contender,
                    e.error.as_deref().unwrap_or("")
                ));
            }
            s.push('\n');
        }
        if !self.notes.is_empty() {
            s.push_str("## Notes\n\n");
            for n in &self.notes {
                s.push_str(&format!("- {n}\n"));
            }
            s.push('\n');
        }
        s.push_str("## Settings\n\n");
        for (k, v) in &self.settings {
            s.push_str(&format!("- {k}: `{v}`\n"));
        }
        s.push_str("\n## Machine and versions\n\n");
        for (k, v) in &self.meta {
            s.push_str(&format!("- {k}: `{}`\n", v.replace('\n', " / ")));
        }
        s.push_str("\n## Commands (first round)\n\n```\n");
        let first = self.samples.iter().map(|x| x.round).min().unwrap_or(0);
        for x in self.samples.iter().filter(|x| x.round == first) {
            for c in &x.commands {
                s.push_str(&format!("# {} {}\n{c}\n", x.variant, x.contender));
            }
        }
        s.push_str("```\n");
        s
    }

    /// Writes `<scenario>-<ts>.json`, `.md` and one SVG per plot into `dir`.
    pub fn write(&mut self, dir: &Path) -> Result<Vec<PathBuf>> {
        self.summarize();
        std::fs::create_dir_all(dir)?;
        let base = format!("{}-{}", self.scenario, self.timestamp);
        let mut out = Vec::new();
        let j = dir.join(format!("{base}.json"));
        std::fs::write(&j, serde_json::to_string_pretty(self)?)?;
        out.push(j);
        let m = dir.join(format!("{base}.md"));
        let mut md = self.markdown();
        for (key, title) in &self.plots {
            let p = dir.join(format!("{base}-{key}.svg"));
            if let Err(e) = self.plot(&p, key, title) {
                md.push_str(&format!("\n(plot {key} failed: {e:#})\n"));
                continue;
            }
            md.push_str(&format!(
                "\n![{title}]({})\n",
                p.file_name().unwrap().to_string_lossy()
            ));
            out.push(p);
        }
        if !self.timeline.is_empty() {
            let p = dir.join(format!("{base}.svg"));
            match self.plot_timeline(&p) {
                Ok(()) => {
                    md.push_str(&format!(
                        "\n![{} over time]({})\n",
                        self.scenario,
                        p.file_name().unwrap().to_string_lossy()
                    ));
                    out.push(p);
                }
                Err(e) => md.push_str(&format!("\n(timeline plot failed: {e:#})\n")),
            }
        }
        std::fs::write(&m, md)?;
        out.insert(1, m);
        Ok(out)
    }

    /// The timeline panels stacked vertically, one line per series, x in
    /// seconds since the start.
    fn plot_timeline(&self, path: &Path) -> Result<()> {
        use plotters::prelude::*;
        let colors = [
            RGBColor(0x4c, 0x72, 0xb0),
            RGBColor(0xdd, 0x84, 0x52),
            RGBColor(0x55, 0xa8, 0x68),
            RGBColor(0xc4, 0x4e, 0x52),
            RGBColor(0x81, 0x72, 0xb3),
        ];
        let n = self.timeline.len() as u32;
        let root = SVGBackend::new(path, (900, 300 * n)).into_drawing_area();
        root.fill(&WHITE)?;
        for (panel, area) in self.timeline.iter().zip(root.split_evenly((n as usize, 1))) {
            let pts = panel.series.iter().flat_map(|(_, v)| v.iter());
            let (mut xmax, mut ymax) = (1f64, 0f64);
            for &(x, y) in pts {
                xmax = xmax.max(x);
                ymax = ymax.max(y);
            }
            if ymax <= 0.0 {
                ymax = 1.0;
            }
            let mut chart = ChartBuilder::on(&area)
                .caption(&panel.title, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(70)
                .build_cartesian_2d(0f64..xmax, 0f64..ymax * 1.15)?;
            chart
                .configure_mesh()
                .x_desc("seconds")
                .y_desc(panel.y_desc.as_str())
                .draw()?;
            for (i, (name, v)) in panel.series.iter().enumerate() {
                let c = colors[i % colors.len()];
                chart
                    .draw_series(LineSeries::new(v.iter().copied(), c.stroke_width(2)))?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::LowerRight)
                .draw()?;
        }
        root.present()?;
        Ok(())
    }

    /// A grouped bar chart: groups = variants, bars = contenders, bar =
    /// median, whisker = min–max.
    fn plot(&self, path: &Path, key: &str, title: &str) -> Result<()> {
        use plotters::prelude::*;
        // Only the variants that have the metric (with layouts, variants
        // measure different things).
        let variants: Vec<String> = self
            .variants()
            .into_iter()
            .filter(|v| {
                self.summary
                    .iter()
                    .any(|r| &r.variant == v && r.stats.contains_key(key))
            })
            .collect();
        let contenders = self.contenders();
        let colors = [
            RGBColor(0x4c, 0x72, 0xb0),
            RGBColor(0xdd, 0x84, 0x52),
            RGBColor(0x55, 0xa8, 0x68),
            RGBColor(0xc4, 0x4e, 0x52),
            RGBColor(0x81, 0x72, 0xb3),
        ];
        let mut ymax = 0f64;
        for r in &self.summary {
            if let Some(s) = r.stats.get(key) {
                ymax = ymax.max(s.max);
            }
        }
        if ymax <= 0.0 {
            ymax = 1.0;
        }
        let nb = contenders.len().max(1) as f64;
        let ng = variants.len().max(1) as f64;
        let root = SVGBackend::new(
            path,
            (
                220 + 160 * variants.len() as u32 * contenders.len() as u32 / 2,
                420,
            ),
        )
        .into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..ng, 0f64..ymax * 1.15)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(key)
            .draw()?;
        for (gi, v) in variants.iter().enumerate() {
            for (ci, c) in contenders.iter().enumerate() {
                let Some(st) = self
                    .summary
                    .iter()
                    .find(|r| &r.variant == v && &r.contender == c)
                    .and_then(|r| r.stats.get(key))
                else {
                    continue;
                };
                let w = 0.8 / nb;
                let x0 = gi as f64 + 0.1 + ci as f64 * w;
                let color = colors[ci % colors.len()];
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x0 + w * 0.08, 0.0), (x0 + w * 0.92, st.median)],
                    color.filled(),
                )))?;
                let xm = x0 + w / 2.0;
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(xm, st.min), (xm, st.max)],
                    BLACK.stroke_width(2),
                )))?;
                chart.draw_series(std::iter::once(Text::new(
                    c.to_string(),
                    (x0 + w * 0.1, st.max + ymax * 0.04),
                    ("sans-serif", 11),
                )))?;
            }
            chart.draw_series(std::iter::once(Text::new(
                v.clone(),
                (gi as f64 + 0.45, -ymax * 0.0),
                ("sans-serif", 13),
            )))?;
        }
        root.present()?;
        Ok(())
    }

    /// Errors make the run fail (after the report is written): a contender
    /// that returned errors or nothing is not a result.
    pub fn failures(&self) -> Vec<String> {
        self.samples
            .iter()
            .filter_map(|s| {
                s.error
                    .as_ref()
                    .map(|e| format!("{} {} round {}: {e}", s.variant, s.contender, s.round))
            })
            .collect()
    }
}

fn fmt(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

pub fn timestamp() -> String {
    // SAFETY: time/gmtime_r write into our own tm.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::gmtime_r(&t, &mut tm);
        format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec
        )
    }
}
