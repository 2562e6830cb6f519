//! Compiles the XDP program (`bpf/ferrogate.bpf.c`) to `$OUT_DIR/ferrogate.bpf.o`.

use std::{env, path::PathBuf, process::Command};

const SOURCE: &str = "bpf/ferrogate.bpf.c";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let object = out_dir.join("ferrogate.bpf.o");
    // Debian puts asm/types.h under the multiarch directory only.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_owned());
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");

    let output = Command::new(&clang)
        .args([
            "-O2", "-g", "-target", "bpf", &multiarch, "-Wall", "-Werror", "-c", SOURCE, "-o",
        ])
        .arg(&object)
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) => panic!(
            "ferrogate-ebpf: cannot run `{clang}` to compile {SOURCE} ({e}). \
             The XDP program needs clang and libbpf-dev: run `./vendor-setup.sh` \
             (or `apt-get install clang libbpf-dev`), or point $CLANG at a clang binary."
        ),
    };
    if !output.status.success() {
        panic!(
            "ferrogate-ebpf: `{clang}` failed to compile {SOURCE} ({}):\n{}\n{}\
             (missing headers? run `./vendor-setup.sh`, which installs clang and libbpf-dev)",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
    }
}
