//! Python tools the tests run as independent peers, installed from PyPI into a virtualenv on first use.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A virtualenv under the target directory with `requirement` installed; returns its python.
pub fn venv(name: &str, requirement: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let python = dir.join("bin").join("python");
    let marker = dir.join(".installed");
    let wanted = requirement.to_owned();
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        return python;
    }
    let status = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&dir)
        .status()
        .expect("run python3 -m venv");
    assert!(status.success(), "python3 -m venv {} failed", dir.display());
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            requirement,
        ])
        .status()
        .expect("run pip");
    assert!(status.success(), "pip install {requirement} failed");
    std::fs::write(&marker, wanted).unwrap();
    python
}
