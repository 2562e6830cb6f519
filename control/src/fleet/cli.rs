//! The operator's fleet commands: `ferrogate ctl publish`, `ctl keygen`
//! and `ctl fleet status`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};

use super::bundle::{self, BundleError};
use super::etcd::{Cas, Client};
use super::{bundle_key, check_name};

pub struct PublishArgs {
    pub file: PathBuf,
    pub key: PathBuf,
    pub etcd: Vec<String>,
    pub cluster: String,
    pub version: Option<String>,
    /// The bundle's serial (default: above the current one's, at least the
    /// time in ms); only needed
    /// when etcd lost its data and hosts still remember a higher one.
    pub serial: Option<u64>,
    /// Publish only over this bundle revision (0: none may exist); by
    /// default the revision read just before writing.
    pub expect_revision: Option<i64>,
    /// A progressive rollout (signed into the bundle).
    pub rollout: Option<super::rollout::Plan>,
}

/// Why a publish did not happen, for the exit code.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The configuration or its files: exit 1, like `check`.
    #[error("{0}")]
    Invalid(BundleError),
    /// Another publisher wrote first: exit 3.
    #[error(
        "conflict: the bundle of cluster {cluster} changed since revision {expected} (now {now}); nothing was written — look at what is published and publish again"
    )]
    Conflict {
        cluster: String,
        expected: i64,
        now: String,
    },
    #[error("{0:#}")]
    Other(anyhow::Error),
}

impl PublishError {
    pub fn exit_code(&self) -> i32 {
        match self {
            PublishError::Invalid(_) => 1,
            PublishError::Conflict { .. } => 3,
            PublishError::Other(_) => 2,
        }
    }
}

/// Validates, bundles, signs and writes; returns what to print.
pub fn publish(a: &PublishArgs) -> std::result::Result<String, PublishError> {
    let other = |e: anyhow::Error| PublishError::Other(e);
    check_name("cluster", &a.cluster).map_err(other)?;
    // Checked before etcd is asked anything.
    if let Some(plan) = &a.rollout {
        plan.validate()
            .map_err(|e| PublishError::Invalid(e.into()))?;
    }
    bundle::build(&a.file, &a.cluster, a.version.clone(), 0).map_err(PublishError::Invalid)?;
    let key = bundle::load_signing_key(&a.key).map_err(PublishError::Invalid)?;
    let client = Client::new(&a.etcd, Duration::from_secs(5)).map_err(|e| other(e.into()))?;
    let k = bundle_key(&a.cluster);
    let (_, current) = client.get(k.as_bytes()).map_err(|e| other(e.into()))?;
    let expected = a
        .expect_revision
        .unwrap_or_else(|| current.as_ref().map(|kv| kv.mod_revision).unwrap_or(0));
    // Above the current bundle's (a newer one than `expected` makes the
    // write below fail) and at least the time in ms. The current serial
    // counts only from a bundle this key signed for this cluster: anyone
    // who can write to etcd could otherwise put a serial of u64::MAX there
    // and make every later publish a refused replay.
    let current_verified = current
        .as_ref()
        .and_then(|kv| bundle::verify(&kv.value, &[key.verifying_key()], &a.cluster).ok());
    let serial = a.serial.unwrap_or_else(|| {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        current_verified
            .as_ref()
            .map_or(0, |v| v.payload.serial)
            .saturating_add(1)
            .max(now_ms)
    });
    if serial == u64::MAX {
        return Err(other(anyhow::anyhow!(
            "serial {serial} leaves no room for a next bundle"
        )));
    }
    let mut payload = bundle::build(&a.file, &a.cluster, a.version.clone(), serial)
        .map_err(PublishError::Invalid)?;
    // The bundle a rollout replaces, named in it for the operator (each
    // host goes back to what it ran itself).
    payload.rollout = a.rollout.clone().map(|mut plan| {
        plan.previous = current_verified.as_ref().map(|v| super::rollout::Previous {
            serial: v.payload.serial,
            digest: v.digest.clone(),
            version: v.payload.version.clone(),
        });
        plan
    });
    let sealed = bundle::seal(&payload, &key);
    if sealed.len() > bundle::MAX_ENVELOPE {
        return Err(PublishError::Invalid(BundleError::TooLarge {
            size: sealed.len(),
            max: bundle::MAX_ENVELOPE,
        }));
    }
    match client
        .put_if_mod_revision(k.as_bytes(), &sealed, expected)
        .map_err(|e| other(e.into()))?
    {
        Cas::Written(h) => Ok(format!(
            "published version {} (serial {}) to cluster {} at revision {} ({} files, {} bytes, signed by {}){}\n",
            payload.version,
            payload.serial,
            a.cluster,
            h.revision,
            payload.files.len(),
            sealed.len(),
            bundle::fingerprint(&key.verifying_key()),
            payload
                .rollout
                .as_ref()
                .map(|p| format!("; rollout {}", p.describe()))
                .unwrap_or_default(),
        )),
        Cas::Conflict(now) => Err(PublishError::Conflict {
            cluster: a.cluster.clone(),
            expected,
            now: match now {
                Some(kv) => format!("revision {}", kv.mod_revision),
                None => "deleted".into(),
            },
        }),
    }
}

/// `ctl keygen OUT`: writes OUT (private) and OUT.pub.
pub fn keygen(out: &Path) -> Result<String> {
    let fp = bundle::keygen(out)?;
    Ok(format!(
        "wrote {} (private: keep it off the edges) and {}.pub (list it in each host's bootstrap trusted_keys)\nkey {fp}\n",
        out.display(),
        out.display()
    ))
}

/// `ctl fleet forget HOST`: removes a decommissioned host from the
/// members, so `fleet status` stops naming it silent and rollouts stop
/// waiting for it. A host still reporting is refused (it is not gone; its
/// daemon would register again with its next lease). Exit 0 forgotten,
/// 1 refused or not a member.
pub fn fleet_forget(etcd: &[String], cluster: &str, host: &str) -> Result<(i32, String)> {
    check_name("cluster", cluster)?;
    check_name("host", host)?;
    let client = Client::new(etcd, Duration::from_secs(5))?;
    let (_, live) = client.get(super::host_key(cluster, host).as_bytes())?;
    if live.is_some() {
        return Ok((
            1,
            format!(
                "host {host} is live (it reports its status); stop its daemon first, then forget it\n"
            ),
        ));
    }
    if client.delete(super::member_key(cluster, host).as_bytes())? == 0 {
        return Ok((
            1,
            format!("host {host} is not a member of cluster {cluster}\n"),
        ));
    }
    Ok((0, format!("forgot host {host} of cluster {cluster}\n")))
}

/// One host as `fleet status` shows it.
#[derive(Debug, PartialEq, Eq)]
pub struct HostRow {
    pub host: String,
    pub live: bool,
    pub version: String,
    pub revision: i64,
    pub in_sync: bool,
    pub last_error: String,
    /// The host's rollout entry: its state and gate for that serial.
    pub rollout: Option<(u64, String, String)>,
    /// Its wave in the current bundle's rollout.
    pub wave: Option<usize>,
}

/// Hosts from `members/` and their live status from `hosts/`: a member
/// without a status (its lease ran out) is silent.
pub fn rows(
    members: &[(String, Vec<u8>)],
    hosts: &[(String, Vec<u8>)],
    bundle_revision: i64,
) -> Vec<HostRow> {
    let mut names: Vec<&str> = members
        .iter()
        .chain(hosts)
        .map(|(k, _)| k.as_str())
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let status = hosts
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| serde_json::from_slice::<serde_json::Value>(v).ok());
            match status {
                None => HostRow {
                    host: name.into(),
                    live: false,
                    version: "-".into(),
                    revision: 0,
                    in_sync: false,
                    last_error: "no status: the host went silent (its lease expired)".into(),
                    rollout: None,
                    wave: None,
                },
                Some(s) => {
                    let revision = s["revision"].as_i64().unwrap_or(0);
                    HostRow {
                        host: name.into(),
                        live: true,
                        version: s["version"].as_str().unwrap_or("-").into(),
                        revision,
                        in_sync: s["in_sync"].as_bool().unwrap_or(false)
                            && revision == bundle_revision,
                        last_error: s["last_error"].as_str().unwrap_or("-").into(),
                        rollout: s["rollout"]["serial"].as_u64().map(|serial| {
                            let r = &s["rollout"];
                            (
                                serial,
                                r["state"].as_str().unwrap_or("?").to_string(),
                                r["gate"].as_str().unwrap_or("").to_string(),
                            )
                        }),
                        wave: None,
                    }
                }
            }
        })
        .collect()
}

/// `ctl fleet status`: exit 0 when every host is live and runs the
/// current bundle, 1 otherwise.
pub fn fleet_status(etcd: &[String], cluster: &str) -> Result<(i32, String)> {
    check_name("cluster", cluster)?;
    let client = Client::new(etcd, Duration::from_secs(5))?;
    let (_, bundle) = client.get(bundle_key(cluster).as_bytes())?;
    let list = |sub: &str| -> Result<Vec<(String, Vec<u8>)>> {
        let prefix = format!("/ferrogate/{cluster}/{sub}/");
        let r = client.get_prefix(prefix.as_bytes())?;
        Ok(r.kvs
            .into_iter()
            .map(|kv| {
                let k = String::from_utf8_lossy(&kv.key);
                (k.trim_start_matches(prefix.as_str()).to_string(), kv.value)
            })
            .collect())
    };
    let (members, hosts) = (list("members")?, list("hosts")?);
    // Shown as etcd holds it: not verified here (the hosts do that).
    let payload = bundle.as_ref().and_then(|kv| {
        serde_json::from_slice::<serde_json::Value>(&kv.value)
            .ok()
            .and_then(|e| serde_json::from_str::<serde_json::Value>(e["payload"].as_str()?).ok())
    });
    let (rev, version) = match &bundle {
        None => (0, "none".to_string()),
        Some(kv) => {
            let v = payload
                .as_ref()
                .and_then(|p| p["version"].as_str().map(str::to_string))
                .unwrap_or_else(|| "?".into());
            (kv.mod_revision, v)
        }
    };
    let mut rows = rows(&members, &hosts, rev);
    let mut out = format!("cluster {cluster} bundle {version} revision {rev}\n");
    let plan = payload.as_ref().and_then(|p| {
        let plan: super::rollout::Plan = serde_json::from_value(p["rollout"].clone()).ok()?;
        Some((
            p["serial"].as_u64()?,
            p["created_unix_s"].as_u64().unwrap_or(0),
            plan,
        ))
    });
    if let Some((serial, created, plan)) = &plan {
        let stopped = client
            .get(super::rollout_key(cluster, *serial).as_bytes())?
            .1
            .and_then(|kv| serde_json::from_slice::<serde_json::Value>(&kv.value).ok());
        out.push_str(&rollout_line(*serial, plan, stopped.as_ref(), &rows));
        if let Ok(waves) = plan.validate() {
            // As the hosts compute them: who registered by the bundle's
            // creation, then the joiners.
            let listed: Vec<(String, Option<u64>)> = rows
                .iter()
                .map(|r| {
                    let at = members
                        .iter()
                        .find(|(m, _)| *m == r.host)
                        .and_then(|(_, v)| super::rollout::registered_unix_s(v));
                    (r.host.clone(), at)
                })
                .collect();
            for (host, wave) in super::rollout::assign_members(&listed, *created, *serial, &waves) {
                if let Some(r) = rows.iter_mut().find(|r| r.host == host) {
                    r.wave = Some(wave);
                }
            }
        }
    }
    out.push_str(&format!(
        "{:<24} {:<7} {:<24} {:>9} {:<7} {:<4} {:<12} {}\n",
        "HOST", "STATE", "VERSION", "REVISION", "IN_SYNC", "WAVE", "ROLLOUT", "LAST_ERROR"
    ));
    let serial = plan.as_ref().map(|p| p.0);
    for r in &rows {
        let (state, gate) = match (&r.rollout, serial) {
            (Some((s, state, gate)), Some(want)) if *s == want => (state.as_str(), gate.as_str()),
            _ => ("-", ""),
        };
        let mut last = r.last_error.clone();
        if !gate.is_empty() {
            last = if last == "-" {
                format!("gate {gate}")
            } else {
                format!("gate {gate}; {last}")
            };
        }
        out.push_str(&format!(
            "{:<24} {:<7} {:<24} {:>9} {:<7} {:<4} {:<12} {}\n",
            r.host,
            if r.live { "live" } else { "SILENT" },
            r.version,
            r.revision,
            if r.in_sync { "yes" } else { "no" },
            r.wave.map_or("-".into(), |w| w.to_string()),
            state,
            last
        ));
    }
    let ok = !rows.is_empty() && rows.iter().all(|r| r.live && r.in_sync);
    Ok((if ok { 0 } else { 1 }, out))
}

/// The rollout's summary line of `fleet status`.
pub fn rollout_line(
    serial: u64,
    plan: &super::rollout::Plan,
    stopped: Option<&serde_json::Value>,
    rows: &[HostRow],
) -> String {
    fn of_this(r: &HostRow, serial: u64) -> Option<&(u64, String, String)> {
        r.rollout.as_ref().filter(|x| x.0 == serial)
    }
    let state = if let Some(s) = stopped {
        format!(
            "STOPPED by {}: {}",
            s["by"].as_str().unwrap_or("?"),
            s["stopped"].as_str().unwrap_or("?")
        )
    } else if !rows.is_empty()
        && rows
            .iter()
            .all(|r| of_this(r, serial).is_some_and(|x| x.1 == "passed" || x.1 == "complete"))
    {
        "complete".into()
    } else {
        "in progress".into()
    };
    let previous = plan
        .previous
        .as_ref()
        .map(|p| format!(" (replaces {} serial {})", p.version, p.serial))
        .unwrap_or_default();
    format!(
        "rollout serial {serial} {}{previous}: {state}\n",
        plan.describe()
    )
}

/// `--etcd a,b` as given once or repeated.
pub fn endpoints(list: &[String]) -> Result<Vec<String>> {
    let v: Vec<String> = list
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if v.is_empty() {
        bail!("--etcd: no endpoint");
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_rows_flag_silent_and_lagging_hosts() {
        let s = |v: &str| v.as_bytes().to_vec();
        let members = vec![
            ("a".to_string(), s("{}")),
            ("b".to_string(), s("{}")),
            ("c".to_string(), s("{}")),
        ];
        let hosts = vec![
            (
                "a".to_string(),
                s(r#"{"version":"v2","revision":9,"in_sync":true,"last_error":null}"#),
            ),
            (
                "c".to_string(),
                s(r#"{"version":"v1","revision":5,"in_sync":true,"last_error":"x"}"#),
            ),
        ];
        let r = rows(&members, &hosts, 9);
        assert_eq!(r.len(), 3);
        assert!(r[0].live && r[0].in_sync && r[0].version == "v2");
        assert!(!r[1].live && r[1].last_error.contains("silent"));
        assert!(r[2].live && !r[2].in_sync, "behind the current bundle");
    }

    #[test]
    fn the_rollout_line_says_stopped_complete_or_in_progress() {
        let s = |v: &str| v.as_bytes().to_vec();
        let members = vec![("a".to_string(), s("{}")), ("b".to_string(), s("{}"))];
        let status = |state: &str| {
            s(&format!(
                r#"{{"version":"v2","revision":9,"in_sync":true,"rollout":{{"serial":7,"state":"{state}","gate":"passed: ok"}}}}"#
            ))
        };
        let plan = crate::fleet::rollout::Plan::new("1,100%");
        let hosts = vec![
            ("a".to_string(), status("passed")),
            ("b".to_string(), status("baking")),
        ];
        let r = rows(&members, &hosts, 9);
        assert_eq!(
            r[0].rollout,
            Some((7, "passed".into(), "passed: ok".into()))
        );
        assert!(rollout_line(7, &plan, None, &r).ends_with(": in progress\n"));
        let hosts = vec![
            ("a".to_string(), status("passed")),
            ("b".to_string(), status("complete")),
        ];
        let r = rows(&members, &hosts, 9);
        assert!(rollout_line(7, &plan, None, &r).ends_with(": complete\n"));
        // Entries of an older rollout do not count for this one.
        assert!(rollout_line(8, &plan, None, &r).ends_with(": in progress\n"));
        let stop = serde_json::json!({"stopped": "a: gate failed: error ratio 1.000", "by": "a"});
        let line = rollout_line(7, &plan, Some(&stop), &r);
        assert!(
            line.contains("STOPPED by a: a: gate failed: error ratio"),
            "{line}"
        );
    }

    #[test]
    fn endpoints_split_on_commas() {
        assert_eq!(
            endpoints(&["http://a:1, http://b:2".into(), "http://c:3".into()]).unwrap(),
            ["http://a:1", "http://b:2", "http://c:3"]
        );
        assert!(endpoints(&[" , ".into()]).is_err());
    }
}
