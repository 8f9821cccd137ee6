//! `scripts/setup.sh`: installs only what is missing, and runs no package
//! manager when everything is present (issue 17). Package managers are
//! stand-ins on PATH that log their arguments; the real ones are never run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::root;

/// A stand-in `apt-get` (and `sudo -n`) that logs each call. `install`
/// provides `cmake` as a stub in `bin`, as the real package would.
fn fake_package_managers(bin: &Path, log: &Path) {
    let apt = format!(
        "#!/bin/sh\necho \"apt-get $*\" >> '{log}'\ncase \"$*\" in *install*cmake*) printf '#!/bin/sh\\n' > '{bin}/cmake'; /bin/chmod +x '{bin}/cmake';; esac\n",
        log = log.display(),
        bin = bin.display()
    );
    let sudo = format!(
        "#!/bin/sh\necho \"sudo $*\" >> '{}'\n[ \"$1\" = -n ] && shift\nexec \"$@\"\n",
        log.display()
    );
    for (name, text) in [("apt-get", apt.as_str()), ("sudo", sudo.as_str())] {
        let p = bin.join(name);
        std::fs::write(&p, text).unwrap();
        make_executable(&p);
    }
}

fn make_executable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Where `name` is on this process's PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A PATH directory with the tools setup.sh uses linked in, except `without`.
fn restricted_bin(dir: &Path, without: &[&str]) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    // python3 may be a pyenv shim that needs the full PATH: link the interpreter.
    let py = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    let py = PathBuf::from(String::from_utf8(py.stdout).unwrap().trim());
    std::os::unix::fs::symlink(&py, bin.join("python3")).unwrap();
    for tool in [
        "cmake",
        "clang",
        "pkg-config",
        "id",
        "awk",
        "tr",
        "sed",
        "mktemp",
        "rm",
        "cat",
    ] {
        if without.contains(&tool) {
            continue;
        }
        let p =
            on_path(tool).unwrap_or_else(|| panic!("{tool} is not on PATH: run scripts/setup.sh"));
        std::os::unix::fs::symlink(p, bin.join(tool)).unwrap();
    }
    bin
}

fn setup(path: &std::ffi::OsStr, args: &[&str]) -> (Output, Duration) {
    let t = Instant::now();
    let out = Command::new("/bin/bash")
        .arg(root().join("scripts/setup.sh"))
        .args(args)
        .env("PATH", path)
        .output()
        .expect("bash runs");
    (out, t.elapsed())
}

fn log_of(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn setup_with_everything_present_runs_no_package_manager_and_is_fast() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("fakes");
    std::fs::create_dir(&bin).unwrap();
    let log = dir.path().join("calls.log");
    fake_package_managers(&bin, &log);
    // The stand-ins come first on the full PATH: any package-manager call is logged.
    let mut paths = vec![bin.clone()];
    paths.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap()));
    let path = std::env::join_paths(paths).unwrap();
    let (out, took) = setup(&path, &[]);
    assert!(
        out.status.success(),
        "setup failed on a machine that has everything (scripts/test.sh runs it first): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(log_of(&log), "", "a package manager ran");
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "setup printed {out:?}"
    );
    assert!(took < Duration::from_secs(1), "setup took {took:?}");
    let (out, _) = setup(&path, &["--check"]);
    assert!(out.status.success());
}

#[test]
fn setup_installs_only_what_is_missing_with_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let bin = restricted_bin(dir.path(), &["cmake"]);
    let log = dir.path().join("calls.log");
    fake_package_managers(&bin, &log);
    let (out, _) = setup(bin.as_os_str(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.trim(), "setup: installing cmake (for cmake)");
    let calls = log_of(&log);
    let installs: Vec<&str> = calls.lines().filter(|l| l.contains(" install ")).collect();
    assert_eq!(installs.len(), 1, "{calls}");
    assert!(
        installs[0].ends_with("install -y -qq --no-install-recommends cmake"),
        "{calls}"
    );
    // Now everything is present: a second run calls nothing.
    std::fs::remove_file(&log).unwrap();
    let (out, _) = setup(bin.as_os_str(), &[]);
    assert!(out.status.success() && out.stderr.is_empty());
    assert_eq!(log_of(&log), "");
}

#[test]
fn setup_check_and_a_machine_without_apt_say_what_to_install() {
    let dir = tempfile::tempdir().unwrap();
    let bin = restricted_bin(dir.path(), &["cmake", "pkg-config"]);
    let log = dir.path().join("calls.log");
    fake_package_managers(&bin, &log);
    let (out, _) = setup(bin.as_os_str(), &["--check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("setup: missing: cmake pkg-config"),
        "{stderr}"
    );
    for hint in [
        "apt-get install -y cmake pkg-config",
        "brew install cmake pkg-config",
        "dnf install -y cmake pkgconf-pkg-config",
        "pacman -S --needed cmake pkgconf",
    ] {
        assert!(stderr.contains(hint), "no {hint:?} in {stderr}");
    }
    assert_eq!(log_of(&log), "", "--check installed something");

    std::fs::remove_file(bin.join("apt-get")).unwrap();
    let (out, _) = setup(bin.as_os_str(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no apt-get on this machine"), "{stderr}");
    assert!(
        stderr.contains("hint: macOS:         brew install cmake pkg-config"),
        "{stderr}"
    );
    assert_eq!(log_of(&log), "");
}
