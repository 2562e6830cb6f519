//! A small reader of the Prometheus text format 0.0.4, strict where
//! Prometheus 2.x is: names and label names valid, label values escaped,
//! values floats, one `# TYPE` per family before its samples and all of a
//! family's samples together, histograms cumulative with a `+Inf` bucket
//! equal to `_count`.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// Family name → type.
    pub types: HashMap<String, String>,
    /// Family name → help text (unescaped).
    pub help: HashMap<String, String>,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars().enumerate().all(|(i, c)| {
            c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
        })
}

fn valid_label_name(n: &str) -> bool {
    valid_name(n) && !n.contains(':')
}

/// The family a sample name belongs to, given the families typed so far.
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    for s in ["_bucket", "_sum", "_count"] {
        if let Some(f) = name.strip_suffix(s)
            && types
                .get(f)
                .is_some_and(|t| t == "histogram" || t == "summary")
        {
            return f;
        }
    }
    name
}

fn parse_labels(line: &str, r: &str) -> Result<(Vec<(String, String)>, usize), String> {
    let b = r.as_bytes();
    let mut labels = Vec::new();
    let mut i = 0;
    loop {
        if b.get(i) == Some(&b'}') {
            return Ok((labels, i + 1));
        }
        let eq = r[i..].find('=').ok_or(format!("no = in {line}"))? + i;
        let name = &r[i..eq];
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?} in {line}"));
        }
        if b.get(eq + 1) != Some(&b'"') {
            return Err(format!("unquoted label value in {line}"));
        }
        let mut value = String::new();
        i = eq + 2;
        loop {
            match b.get(i) {
                None => return Err(format!("unterminated label value in {line}")),
                Some(b'"') => break,
                Some(b'\\') => {
                    value.push(match b.get(i + 1) {
                        Some(b'n') => '\n',
                        Some(b'\\') => '\\',
                        Some(b'"') => '"',
                        _ => return Err(format!("bad escape in {line}")),
                    });
                    i += 2;
                }
                Some(b'\n') => return Err(format!("raw newline in {line}")),
                Some(_) => {
                    let c = r[i..].chars().next().expect("in bounds");
                    value.push(c);
                    i += c.len_utf8();
                }
            }
        }
        if labels.iter().any(|(n, _)| n == name) {
            return Err(format!("label {name} twice in {line}"));
        }
        labels.push((name.to_string(), value));
        i += 1;
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => {}
            _ => return Err(format!("expected , or }} in {line}")),
        }
    }
}

fn parse_value(line: &str, v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        v => v.parse().map_err(|_| format!("bad value in {line}")),
    }
}

pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut e = Exposition::default();
    let mut current: Option<String> = None;
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the last line has no newline".into());
    }
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if !valid_name(name) {
                return Err(format!("bad name in {line}"));
            }
            let help = help.replace("\\n", "\n").replace("\\\\", "\\");
            if e.help.insert(name.to_string(), help).is_some() {
                return Err(format!("second HELP for {name}"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (Some(name), Some(typ), None) = (it.next(), it.next(), it.next()) else {
                return Err(format!("bad TYPE line {line}"));
            };
            if !valid_name(name) {
                return Err(format!("bad name in {line}"));
            }
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&typ) {
                return Err(format!("bad type in {line}"));
            }
            if e.types.insert(name.to_string(), typ.to_string()).is_some() {
                return Err(format!("second TYPE for {name}"));
            }
            current = Some(name.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or(format!("no value in {line}"))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(format!("bad metric name in {line}"));
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            let (l, used) = parse_labels(line, r)?;
            labels = l;
            rest = &r[used..];
        }
        let value = rest
            .strip_prefix(' ')
            .ok_or(format!("no space before the value in {line}"))?;
        // A timestamp may follow; this writer never sends one.
        if value.contains(' ') {
            return Err(format!("unexpected timestamp in {line}"));
        }
        let value = parse_value(line, value)?;
        let family = family_of(name, &e.types);
        if !e.types.contains_key(family) {
            return Err(format!("no # TYPE before {line}"));
        }
        if current.as_deref() != Some(family) {
            return Err(format!("{family}'s samples are not together ({line})"));
        }
        if e.types[family] == "histogram" && name == family {
            return Err(format!("a histogram sample without a suffix: {line}"));
        }
        e.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    check_histograms(&e)?;
    Ok(e)
}

/// Buckets cumulative (in `le` order), the `+Inf` one equal to `_count`.
fn check_histograms(e: &Exposition) -> Result<(), String> {
    for (fam, typ) in &e.types {
        if typ != "histogram" {
            continue;
        }
        let without = |s: &Sample, k: &str| -> Vec<(String, String)> {
            s.labels.iter().filter(|(n, _)| n != k).cloned().collect()
        };
        let bucket = format!("{fam}_bucket");
        let count = format!("{fam}_count");
        for c in e.samples.iter().filter(|s| s.name == count) {
            let mut buckets: Vec<(f64, f64)> = e
                .samples
                .iter()
                .filter(|s| s.name == bucket && without(s, "le") == c.labels)
                .map(|s| {
                    let le = s.label("le").ok_or(format!("{bucket} without le"))?;
                    Ok((parse_value(le, le)?, s.value))
                })
                .collect::<Result<_, String>>()?;
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                return Err(format!("{bucket} {:?} is not cumulative", c.labels));
            }
            match buckets.last() {
                Some((le, n)) if *le == f64::INFINITY && *n == c.value => {}
                _ => {
                    return Err(format!(
                        "{bucket} {:?}: no +Inf bucket equal to _count",
                        c.labels
                    ));
                }
            }
            if !e
                .samples
                .iter()
                .any(|s| s.name == format!("{fam}_sum") && s.labels == c.labels)
            {
                return Err(format!("{fam} {:?} has no _sum", c.labels));
            }
        }
    }
    Ok(())
}

#[test]
fn the_reader_refuses_what_prometheus_would() {
    let ok = "# HELP a_total h\n# TYPE a_total counter\na_total{x=\"1\\\"\\n\\\\\"} 1\n";
    let e = parse(ok).unwrap();
    assert_eq!(e.samples[0].label("x"), Some("1\"\n\\"));
    for bad in [
        "a_total 1\n",
        "# TYPE a counter\n# TYPE a counter\na 1\n",
        "# TYPE a counter\na{x=\"\\q\"} 1\n",
        "# TYPE a counter\na{x=1} 1\n",
        "# TYPE a counter\na one\n",
        "# TYPE a counter\na 1",
        "# TYPE a counter\n# TYPE b counter\nb 1\na 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n",
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
}
