//! `ferrogate ctl …`: the admin API's client. Prints the server's answer;
//! exits non-zero when the answer is an error.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::admin;

pub enum CtlCmd {
    Status,
    Stats,
    Metrics,
    Validate(PathBuf),
    Apply(PathBuf),
    Diff,
    Rollback,
}

/// Runs one command; returns the process exit code.
pub fn ctl(socket: &Path, cmd: CtlCmd) -> Result<i32> {
    let file_body = |p: &Path| -> Result<(String, PathBuf)> {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        Ok((text, abs))
    };
    let reply = match cmd {
        CtlCmd::Status => admin::call(socket, "GET", "/status", None)?,
        CtlCmd::Stats => admin::call(socket, "GET", "/stats", None)?,
        CtlCmd::Metrics => admin::call(socket, "GET", "/metrics", None)?,
        CtlCmd::Diff => admin::call(socket, "GET", "/diff", None)?,
        CtlCmd::Rollback => admin::call(socket, "POST", "/rollback", None)?,
        CtlCmd::Validate(p) => {
            let (text, abs) = file_body(&p)?;
            admin::call(socket, "POST", "/validate", Some((&text, &abs)))?
        }
        CtlCmd::Apply(p) => {
            let (text, abs) = file_body(&p)?;
            admin::call(socket, "POST", "/apply", Some((&text, &abs)))?
        }
    };
    if reply.status == 200 {
        print!("{}", reply.body);
        Ok(0)
    } else {
        eprint!("{}", reply.body);
        Ok(1)
    }
}
