//! CI smoke of `ferrogate-bench ceiling --smoke` (1 s per variant): the real
//! engine on an in-memory port with the userspace peer, and the kernel
//! reference (nginx proxying on loopback); no lab.
//! Its own test binary, so it never runs beside the lab smoke. No assertion
//! on speed; the bench fails when a response is bad or none comes.

use std::process::Command;

#[test]
fn ceiling_smoke() {
    let out = std::env::temp_dir().join(format!("ferrogate-ceiling-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let st = Command::new(env!("CARGO_BIN_EXE_ferrogate-bench"))
        .args(["ceiling", "--smoke", "--conns", "16", "--out"])
        .arg(&out)
        .status()
        .expect("running ferrogate-bench");
    assert!(st.success(), "ferrogate-bench ceiling --smoke failed: {st}");
    let files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for ext in [".json", ".md", ".svg"] {
        assert!(
            files
                .iter()
                .any(|f| f.starts_with("ceiling-") && f.ends_with(ext)),
            "no ceiling{ext} in {files:?}"
        );
    }
    let json = files.iter().find(|f| f.ends_with(".json")).unwrap();
    let text = std::fs::read_to_string(out.join(json)).unwrap();
    for want in ["\"tiny\"", "\"16k\"", "\"ferrogate\"", "\"nginx-loopback\""] {
        assert!(text.contains(want), "{want} missing");
    }
    let _ = std::fs::remove_dir_all(&out);
}
