//! `ferrogate completions bash|zsh|fish` and `ferrogate man`: generated
//! from the CLI, so they name the main subcommands.

use std::process::Command;

const SUBCOMMANDS: &[&str] = &[
    "run",
    "engine",
    "control",
    "ctl",
    "check",
    "numa",
    "xdp",
    "lab",
    "completions",
    "man",
];

fn ferrogate(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrogate"))
        .args(args)
        .output()
        .expect("run ferrogate");
    assert!(out.status.success(), "ferrogate {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Whether `word` appears in `text` delimited by non-identifier characters.
fn has_word(text: &str, word: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .any(|w| w == word)
}

#[test]
fn completions_name_the_subcommands_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef ferrogate"),
        ("fish", "complete -c ferrogate"),
    ] {
        let text = ferrogate(&["completions", shell]);
        assert!(text.contains(marker), "{shell}: no {marker:?}");
        for sub in SUBCOMMANDS {
            assert!(has_word(&text, sub), "{shell} completion lacks {sub}");
        }
        // Nested ones too.
        assert!(has_word(&text, "rollback"), "{shell}: ctl rollback");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ferrogate"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "an unknown shell is refused");
}

#[test]
fn the_man_page_documents_the_subcommands() {
    let page = ferrogate(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH ferrogate"),
        "not roff"
    );
    assert!(page.contains(".SH SUBCOMMANDS"), "{page}");
    for sub in SUBCOMMANDS {
        // roff escapes `-` as `\-`: subcommand headings read ferrogate\-run(1).
        assert!(
            page.contains(&format!("ferrogate\\-{sub}")),
            "man page lacks {sub}"
        );
    }
    assert!(
        page.contains("Kernel\\-bypass edge proxy") || page.contains("Kernel-bypass edge proxy")
    );
    let dir = std::env::temp_dir().join(format!("fg-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    ferrogate(&["man", "--out-dir", dir.to_str().unwrap()]);
    for page in [
        "ferrogate.1",
        "ferrogate-run.1",
        "ferrogate-ctl.1",
        "ferrogate-ctl-apply.1",
    ] {
        let p = dir.join(page);
        assert!(p.exists(), "{} missing", p.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
