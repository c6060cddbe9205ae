//! Build script: gives `--version` the commit the binary was built from. `OIDC_BFF_COMMIT`
//! from the environment wins (packaging sets it); otherwise git is asked, so a plain
//! `cargo build` in a clone names its commit too; outside a clone it stays `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=OIDC_BFF_COMMIT");
    let commit = std::env::var("OIDC_BFF_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=OIDC_BFF_COMMIT={commit}");
}

/// The short commit of HEAD, with `-dirty` when the work tree has changes; `None` outside git.
fn git_commit() -> Option<String> {
    // Rebuild when HEAD moves (a commit, a checkout) or the index changes.
    let git_dir = run(&["rev-parse", "--git-dir"])?;
    println!("cargo:rerun-if-changed={git_dir}/HEAD");
    println!("cargo:rerun-if-changed={git_dir}/index");
    if let Some(reference) = run(&["symbolic-ref", "-q", "HEAD"]) {
        println!("cargo:rerun-if-changed={git_dir}/{reference}");
    }
    let commit = run(&["rev-parse", "--short", "HEAD"])?;
    let dirty = Command::new("git")
        .args(["diff-index", "--quiet", "HEAD", "--"])
        .status()
        .is_ok_and(|status| !status.success());
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

fn run(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}
