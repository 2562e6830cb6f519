//! The `.deb` (issue #25), made the way operators make it:
//! `packaging/build-deb.sh` with cargo-deb, but from the binary this build
//! made (`FG_DEB_BIN`, the debug build: a release build would cost CI more
//! than the test is worth). Then Debian's own tools check the package:
//! `dpkg-deb --info` (name, version, Depends covering every library the
//! binary links), `dpkg-deb -c` (what an operator needs, where Debian
//! expects it), `dpkg-deb -x` (the packaged binary runs and accepts every
//! packaged example config) and `systemd-analyze verify` on the packaged
//! unit, its `Documentation=man:ferrogate(1)` looked up in the packaged
//! man pages.
//!
//! Without cargo-deb the test is skipped, unless `CI` is set (`.ci/run`
//! sets it; `vendor-setup.sh` installs cargo-deb): then it fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ferrogate_tests::{ferrogate_bin, workspace};

/// A scratch directory removed when the test ends, passed or not.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Whether `tool` runs; when it does not, a skip outside CI, a failure in it.
fn have(tool: &str, args: &[&str], why: &str) -> bool {
    let ok = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !in_ci(),
            "{tool} is not installed (vendor-setup.sh installs it) and CI is set: {why}"
        );
        println!("skipped: {tool} is not installed (vendor-setup.sh installs it): {why}");
    }
    ok
}

fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// stdout of a command that must succeed.
fn ok(cmd: &mut Command) -> String {
    let o = output(cmd);
    assert!(
        o.status.success(),
        "{cmd:?}: {}\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Package names in a Depends field (alternatives included, versions and
/// architecture qualifiers dropped).
fn depends_names(field: &str) -> BTreeSet<String> {
    field
        .split([',', '|'])
        .filter_map(|d| d.split([' ', '(', ':']).find(|s| !s.is_empty()))
        .map(str::to_string)
        .collect()
}

/// The Debian package that ships `lib` (a path ldd printed), trying the
/// other half of a merged /usr (dpkg knows the path the package shipped).
fn owner(lib: &str) -> Option<String> {
    let real = std::fs::canonicalize(lib)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| lib.to_string());
    let mut candidates = vec![lib.to_string(), real.clone()];
    for p in [lib, real.as_str()] {
        if let Some(rest) = p.strip_prefix("/usr/") {
            candidates.push(format!("/{rest}"));
        } else {
            candidates.push(format!("/usr{p}"));
        }
    }
    candidates.into_iter().find_map(|p| {
        let o = output(Command::new("dpkg").args(["-S", &p]));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let first = out.lines().next()?;
        let pkg = first.split(": ").next()?;
        Some(pkg.split(':').next()?.to_string())
    })
}

/// The libraries `bin` names in DT_NEEDED, each with the package that ships
/// it on this machine.
fn needed_packages(bin: &Path) -> BTreeMap<String, String> {
    let dynamic = ok(Command::new("readelf").arg("-d").arg(bin));
    let needed: Vec<String> = dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split('[').nth(1)?.trim_end_matches(']').to_string()))
        .collect();
    assert!(!needed.is_empty(), "no NEEDED entries:\n{dynamic}");
    let ldd = ok(Command::new("ldd").arg(bin));
    let path_of = |soname: &str| -> Option<String> {
        ldd.lines().find_map(|l| {
            let l = l.trim();
            if let Some((name, rest)) = l.split_once(" => ") {
                (name == soname).then(|| rest.split(" (").next().unwrap().to_string())
            } else {
                // The interpreter: "/lib64/ld-linux-x86-64.so.2 (0x…)".
                let path = l.split(" (").next()?;
                (Path::new(path).file_name()?.to_str()? == soname).then(|| path.to_string())
            }
        })
    };
    needed
        .into_iter()
        .map(|soname| {
            let path =
                path_of(&soname).unwrap_or_else(|| panic!("ldd does not resolve {soname}:\n{ldd}"));
            let pkg = owner(&path).unwrap_or_else(|| panic!("no package ships {path}"));
            (soname, pkg)
        })
        .collect()
}

/// `dpkg-deb -c`: each path (without "./", directories with their "/")
/// and its mode string.
fn contents(deb: &Path) -> BTreeMap<String, String> {
    ok(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let path = fields.get(5..)?.join(" ");
            let path = path.split(" -> ").next()?.trim_start_matches("./");
            Some((path.to_string(), fields[0].to_string()))
        })
        .filter(|(p, _)| !p.is_empty())
        .collect()
}

#[test]
fn the_deb_ships_binary_unit_configs_dashboard_docs_and_its_unit_verifies() {
    if !have(
        "cargo-deb",
        &["--version"],
        "the .deb cannot be built or checked",
    ) {
        return;
    }
    for tool in ["dpkg-deb", "readelf", "ldd"] {
        if !have(tool, &["--version"], "the .deb cannot be checked") {
            return;
        }
    }
    let dir = std::env::temp_dir().join(format!("fg-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let scratch = Scratch(dir);
    let dir = &scratch.0;
    let out = dir.join("out");

    // The package as build-deb.sh makes it, from the debug binary staged
    // in a scratch target dir; stripped and compressed fast (the debug
    // binary is 300 MB: unstripped, the test would need 700 MB of disk).
    ok(Command::new("bash")
        .arg(workspace().join("packaging/build-deb.sh"))
        .args(["-o"])
        .arg(&out)
        .args(["--fast", "--strip", "--offline", "--quiet"])
        .env("FG_DEB_BIN", ferrogate_bin())
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .current_dir(workspace()));
    let debs: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "one .deb in {}: {debs:?}", out.display());
    let deb = &debs[0];

    // The control file.
    let field = |name: &str| {
        ok(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name))
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "ferrogate");
    let version = field("Version");
    let upstream = env!("CARGO_PKG_VERSION");
    assert!(
        version.starts_with(&format!("{upstream}-")),
        "Version: {version}, the workspace is {upstream}"
    );
    assert_eq!(field("Section"), "net");
    // The synopsis (the Description's first line) names what it is, not
    // the package again, in at most 80 characters (Debian policy 3.4.1).
    let description = field("Description");
    let synopsis = description.lines().next().unwrap_or_default();
    assert!(
        !synopsis.to_lowercase().starts_with("ferrogate") && synopsis.len() <= 80,
        "Description synopsis {synopsis:?}"
    );
    let depends = field("Depends");
    let names = depends_names(&depends);
    // Every library the binary links comes from a package Depends names,
    // or one that a named package itself depends on (libgcc-s1 by libc6).
    let mut pulled_in = names.clone();
    for n in &names {
        let o = output(Command::new("dpkg-query").args(["-W", "-f=${Depends}", n.as_str()]));
        pulled_in.extend(depends_names(&String::from_utf8_lossy(&o.stdout)));
    }
    for (soname, pkg) in needed_packages(&ferrogate_bin()) {
        assert!(
            pulled_in.contains(&pkg),
            "the binary links {soname} ({pkg}) but Depends: {depends}"
        );
    }
    let info = ok(Command::new("dpkg-deb").arg("--info").arg(deb));
    let conffiles = ok(Command::new("dpkg-deb")
        .arg("--info")
        .arg(deb)
        .arg("conffiles"));
    assert!(
        conffiles.lines().any(|l| l == "/etc/logrotate.d/ferrogate"),
        "the logrotate file is a conffile (an operator's edits survive upgrades):\n{conffiles}\n{info}"
    );

    // What is in it, and where.
    let files = contents(deb);
    let listing = || {
        files
            .iter()
            .map(|(p, m)| format!("{m} {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mode = |path: &str| {
        files
            .get(path)
            .unwrap_or_else(|| panic!("{path} not in the package:\n{}", listing()))
            .clone()
    };
    assert_eq!(mode("usr/bin/ferrogate"), "-rwxr-xr-x");
    let unit_path = ["usr/lib/systemd/system/", "lib/systemd/system/"]
        .iter()
        .map(|d| format!("{d}ferrogate.service"))
        .find(|p| files.contains_key(p))
        .unwrap_or_else(|| panic!("no ferrogate.service in the package:\n{}", listing()));
    let examples = "usr/share/doc/ferrogate/examples/";
    for file in [
        "usr/share/doc/ferrogate/copyright",
        "usr/share/doc/ferrogate/README.md",
        "usr/share/ferrogate/grafana/ferrogate.json",
        "usr/share/man/man1/ferrogate.1.gz",
        "usr/share/bash-completion/completions/ferrogate",
        "usr/share/zsh/vendor-completions/_ferrogate",
        "usr/share/fish/vendor_completions.d/ferrogate.fish",
        "etc/logrotate.d/ferrogate",
        format!("{examples}edge.example.toml").as_str(),
        format!("{examples}filter.example.toml").as_str(),
        format!("{examples}lab.toml").as_str(),
    ] {
        assert_eq!(mode(file), "-rw-r--r--", "{file}");
    }
    assert_eq!(mode(&unit_path), "-rw-r--r--");
    // Nothing from a build machine's paths or a source tree.
    for p in files.keys() {
        assert!(
            ["etc/", "usr/", "lib/"].iter().any(|d| p.starts_with(d)),
            "{p} is outside /etc, /usr and /lib"
        );
    }

    // Unpacked: the packaged binary and what it reads.
    let root = dir.join("root");
    ok(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root));
    let bin = root.join("usr/bin/ferrogate");
    let v = ok(Command::new(&bin).arg("--version"));
    assert_eq!(v.trim(), format!("ferrogate {upstream}"));
    // A man page for every one the binary generates (subcommands too).
    let man_dir = dir.join("man");
    ok(Command::new(&bin).args(["man", "--out-dir"]).arg(&man_dir));
    let mut pages = 0;
    for e in std::fs::read_dir(&man_dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        let packaged = format!("usr/share/man/man1/{name}.gz");
        mode(&packaged);
        // NAME is "page \- what it does": apropos/whatis list it by that
        // (a subcommand without a doc comment has none).
        let page = ok(Command::new("gzip").arg("-dc").arg(root.join(&packaged)));
        let name_line = page
            .lines()
            .skip_while(|l| *l != ".SH NAME")
            .nth(1)
            .unwrap_or_default();
        assert!(
            name_line.contains(" \\- "),
            "{packaged}: NAME without a description: {name_line:?}"
        );
        pages += 1;
    }
    assert!(pages > 1, "{pages} man pages generated");
    // Every packaged example config passes `ferrogate check` where it was
    // installed (files it names are relative to it).
    let mut checked = Vec::new();
    for e in std::fs::read_dir(root.join(examples)).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            ok(Command::new(&bin).arg("check").arg(&path));
            checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    checked.sort();
    assert_eq!(
        checked,
        ["edge.example.toml", "filter.example.toml", "lab.toml"],
        "the example configs checked"
    );
    let dashboard: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join("usr/share/ferrogate/grafana/ferrogate.json")).unwrap(),
    )
    .expect("the packaged dashboard is JSON");
    assert!(
        dashboard["panels"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "the packaged dashboard has no panels"
    );
    ok(Command::new("bash")
        .arg("-n")
        .arg(root.join("usr/share/bash-completion/completions/ferrogate")));

    // The packaged unit, as systemd would load it: its ExecStart* run the
    // packaged binary (verify checks programs exist and are executable; the
    // unit names /usr/bin/ferrogate, which this machine need not have), its
    // man page is the packaged one.
    if !have(
        "systemd-analyze",
        &["--version"],
        "the packaged unit cannot be verified",
    ) {
        return;
    }
    let unit = std::fs::read_to_string(root.join(&unit_path)).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/ferrogate run "), "{unit}");
    let unit = unit.replace("/usr/bin/ferrogate", bin.to_str().unwrap());
    let unit_dir = dir.join("unit");
    std::fs::create_dir_all(&unit_dir).unwrap();
    let with_man = have(
        "man",
        &["--version"],
        "Documentation=man:ferrogate(1) cannot be looked up (verify --man=no)",
    );
    let verify = |text: &str, manpath: &Path| {
        let path = unit_dir.join("ferrogate.service");
        std::fs::write(&path, text).unwrap();
        let o = output(
            Command::new("systemd-analyze")
                .arg("verify")
                .arg(if with_man { "--man=yes" } else { "--man=no" })
                .arg(&path)
                .env("MANPATH", manpath),
        );
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        // verify exits 0 on some problems it only warns about: a line about
        // this unit is a failure too (lines about the host's units are not).
        let ours = err.lines().any(|l| l.contains("ferrogate"));
        (o.status.success() && !ours, err)
    };
    let man = root.join("usr/share/man");
    let (good, err) = verify(&unit, &man);
    assert!(good, "systemd-analyze verify on the packaged unit:\n{err}");
    // The checks can fail: a misspelt setting, and (with man) a man page
    // the package does not have.
    let (good, err) = verify(&unit.replace("Type=notify", "Type=notifyy"), &man);
    assert!(!good, "a bad Type= passed verify: {err}");
    if with_man {
        let empty = dir.join("no-man");
        std::fs::create_dir_all(&empty).unwrap();
        let (good, err) = verify(&unit, &empty);
        assert!(
            !good && err.contains("man ferrogate(1)"),
            "verify found ferrogate(1) without the packaged man pages: {err}"
        );
    }
}
