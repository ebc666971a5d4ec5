//! The interpreters of the tests' virtualenvs: named by an environment
//! variable, and checked once that they import what the tests need.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The Python that the variable `var` names, checked once per process that it
/// imports `modules`. Panics with what is missing, followed by `how` (how to
/// get such a Python), when it is unset or cannot: a test that needs it must
/// fail, not pass without having run.
pub fn venv_python(var: &str, modules: &[&str], how: &str) -> PathBuf {
    static CHECKED: Mutex<BTreeMap<String, Result<PathBuf, String>>> = Mutex::new(BTreeMap::new());
    let mut checked = CHECKED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let found = checked
        .entry(var.to_owned())
        .or_insert_with(|| check(var, modules));
    match found {
        Ok(python) => python.clone(),
        Err(missing) => panic!("cannot run these tests: {missing}. {how}"),
    }
}

fn check(var: &str, modules: &[&str]) -> Result<PathBuf, String> {
    let python = std::env::var_os(var).ok_or_else(|| format!("{var} is not set"))?;
    let output = Command::new(&python)
        .args(["-c", &format!("import {}", modules.join(", "))])
        .output()
        .map_err(|error| format!("{var}={python:?} cannot be run: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "{var}={python:?} cannot import {}: {}",
            modules.join(", "),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(PathBuf::from(python))
}
