//! Python tools the tests run as independent peers, pinned in tests/requirements.txt: the python of
//! `WEBHOOKD_TEST_PYTHON` (the virtualenv `.ci/run` makes), or one installed from PyPI on first use.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The pins, one `name==version` a line.
const REQUIREMENTS: &str = include_str!("../requirements.txt");

/// The variable naming a python that has every package of tests/requirements.txt.
pub const PYTHON_VAR: &str = "WEBHOOKD_TEST_PYTHON";

/// A python that can import `package` at its pinned version: `$WEBHOOKD_TEST_PYTHON` when set, otherwise a
/// virtualenv under the target directory holding that one package, created on first use.
pub fn python_with(package: &str) -> PathBuf {
    match std::env::var_os(PYTHON_VAR).filter(|p| !p.is_empty()) {
        Some(python) => PathBuf::from(python),
        None => venv(&format!("py-{package}"), &requirement(package)),
    }
}

/// The pinned version of `package` in tests/requirements.txt, for a script to check what it imported.
pub fn pinned_version(package: &str) -> String {
    let line = requirement(package);
    line[package.len() + 2..].to_owned()
}

fn requirement(package: &str) -> String {
    REQUIREMENTS
        .lines()
        .map(str::trim)
        .find(|line| {
            line.strip_prefix(package)
                .is_some_and(|v| v.starts_with("=="))
        })
        .unwrap_or_else(|| panic!("tests/requirements.txt does not pin {package}"))
        .to_owned()
}

/// A virtualenv under the target directory with `requirement` installed; returns its python.
fn venv(name: &str, requirement: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let python = dir.join("bin").join("python");
    let marker = dir.join(".installed");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(requirement) {
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
    std::fs::write(&marker, requirement).unwrap();
    python
}
