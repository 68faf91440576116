//! Python tools the tests run as independent peers, pinned in tests/requirements.txt: the python of
//! `WEBHOOKD_TEST_PYTHON` (the virtualenv `.ci/run` makes), or one installed from PyPI on first use.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The pins, one `name==version` a line.
const REQUIREMENTS: &str = include_str!("../requirements.txt");
/// Label Studio's pin (apart: it is large, and only tests/label_studio.rs needs it).
const LABEL_STUDIO_REQUIREMENTS: &str = include_str!("../requirements-label-studio.txt");

/// The variable naming a python that has every package of tests/requirements.txt.
pub const PYTHON_VAR: &str = "WEBHOOKD_TEST_PYTHON";
/// The variable naming a python that has Label Studio (tests/requirements-label-studio.txt).
pub const LABEL_STUDIO_PYTHON_VAR: &str = "WEBHOOKD_TEST_LABEL_STUDIO_PYTHON";

/// A python that can import `package` at its pinned version: `$WEBHOOKD_TEST_PYTHON` when set, otherwise a
/// virtualenv under the target directory holding that one package, created on first use.
pub fn python_with(package: &str) -> PathBuf {
    match std::env::var_os(PYTHON_VAR).filter(|p| !p.is_empty()) {
        Some(python) => PathBuf::from(python),
        None => venv(&format!("py-{package}"), &requirement(package)),
    }
}

/// A python that has Label Studio at its pinned version: `$WEBHOOKD_TEST_LABEL_STUDIO_PYTHON` when set,
/// otherwise a virtualenv under the target directory, created on first use.
pub fn label_studio_python() -> PathBuf {
    match std::env::var_os(LABEL_STUDIO_PYTHON_VAR).filter(|p| !p.is_empty()) {
        Some(python) => PathBuf::from(python),
        None => venv(
            "py-label-studio",
            &requirement_in(LABEL_STUDIO_REQUIREMENTS, "label-studio"),
        ),
    }
}

/// The pinned version of Label Studio.
pub fn label_studio_version() -> String {
    let line = requirement_in(LABEL_STUDIO_REQUIREMENTS, "label-studio");
    line["label-studio".len() + 2..].to_owned()
}

/// The pinned version of `package` in tests/requirements.txt, for a script to check what it imported.
pub fn pinned_version(package: &str) -> String {
    let line = requirement(package);
    line[package.len() + 2..].to_owned()
}

fn requirement(package: &str) -> String {
    requirement_in(REQUIREMENTS, package)
}

fn requirement_in(requirements: &str, package: &str) -> String {
    requirements
        .lines()
        .map(str::trim)
        .find(|line| {
            line.strip_prefix(package)
                .is_some_and(|v| v.starts_with("=="))
        })
        .unwrap_or_else(|| panic!("the requirements files of tests/ do not pin {package}"))
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
