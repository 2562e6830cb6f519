//! Generates bindings to the system DPDK with bindgen (wrap_static_fns for the
//! static inline burst and mbuf functions) and compiles the generated wrappers
//! and our helpers with `cc`, both with the full `pkg-config --cflags libdpdk`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn fail(msg: &str) -> ! {
    // A panic in build.rs shows the message under "failed to run custom build
    // command"; make it say what to do.
    panic!(
        "\n\nferrogate-dpdk-sys: {msg}\n\
         DPDK (>= 22.11) development files are needed for the `dpdk` feature:\n\
         run ./vendor-setup.sh (installs libdpdk-dev dpdk dpdk-dev libclang-dev pkg-config),\n\
         or build without DPDK: cargo build --workspace --exclude ferrogate-dpdk-sys --no-default-features\n\n"
    );
}

fn pkg_config(args: &[&str]) -> String {
    let out = Command::new("pkg-config")
        .args(args)
        .arg("libdpdk")
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run pkg-config: {e}")));
    if !out.status.success() {
        fail(&format!(
            "`pkg-config {} libdpdk` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Splits pkg-config output into arguments, keeping `-include rte_config.h`
/// as two arguments (that is how clang and gcc want it).
fn split(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=helpers.c");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_LIBDIR");

    let version = pkg_config(&["--modversion"]);
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 22 {
        fail(&format!("libdpdk {version} is too old (need >= 22.11)"));
    }
    let cflags = split(&pkg_config(&["--cflags"]));
    let libs = split(&pkg_config(&["--libs"]));

    // Link every DPDK library (PMDs are loaded at run time from the system
    // PMD directory); --as-needed would drop libraries we only reach through
    // the PMDs' constructors.
    for l in &libs {
        if let Some(name) = l.strip_prefix("-l") {
            println!("cargo:rustc-link-lib=dylib={name}");
        } else if let Some(dir) = l.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        }
    }

    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let wrappers = out.join("static_fns.c");
    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_args(&cflags)
        .allowlist_function("rte_eal_.*")
        .allowlist_function("rte_eth_.*")
        .allowlist_function("rte_pktmbuf_.*")
        .allowlist_function("rte_mempool_.*")
        .allowlist_function("rte_mbuf_.*")
        .allowlist_function("rte_lcore_.*")
        .allowlist_function("rte_socket_.*")
        .allowlist_function("rte_thread_.*")
        .allowlist_function("rte_strerror")
        .allowlist_function("rte_vdev_.*")
        .allowlist_function("rte_ring_.*")
        .allowlist_var("RING_F_.*")
        .allowlist_function("fg_.*")
        .allowlist_type("rte_eth_.*")
        .allowlist_var("RTE_ETH_.*")
        .allowlist_var("RTE_MBUF_.*")
        .allowlist_var("RTE_PKTMBUF_.*")
        .allowlist_var("RTE_MAX_.*")
        .allowlist_var("SOCKET_ID_ANY")
        .allowlist_var("LCORE_ID_ANY")
        .allowlist_var("RTE_ETHDEV_.*")
        .allowlist_var("RTE_ETHER_.*")
        .derive_default(true)
        .layout_tests(false)
        .wrap_static_fns(true)
        .wrap_static_fns_path(&wrappers)
        .generate()
        .unwrap_or_else(|e| fail(&format!("bindgen failed on the DPDK headers: {e}")));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("writing bindings.rs");

    let mut build = cc::Build::new();
    build
        .file(&wrappers)
        .file("helpers.c")
        .include(env::current_dir().unwrap())
        .warnings(false);
    // `-include rte_config.h` must stay a pair; cc passes flags in order.
    for f in &cflags {
        build.flag(f);
    }
    build.compile("ferrogate_dpdk_wrappers");
}
