//! Finding a server binary: an environment variable, then `PATH`, then the project's shared
//! folder of xz-compressed binaries (checked against its `SHA256SUMS`, decompressed once into
//! the target directory).

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where a binary was found, for the one line a test prints about what it runs against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// From the named environment variable.
    Env(&'static str),
    /// On `PATH`.
    Path,
    /// Decompressed from this `.xz` file of the shared folder.
    Shared(PathBuf),
}

/// A server binary ready to run.
#[derive(Clone, Debug)]
pub struct ServerBinary {
    /// The executable.
    pub path: PathBuf,
    /// Where it came from.
    pub found: Found,
}

/// The shared folder beside the checkout: `<workspace>/../shared/servers`.
pub fn shared_servers_dir() -> PathBuf {
    // This crate sits at `<workspace>/backends/<crate>`.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    workspace.join("../shared/servers")
}

/// The cargo target directory of the running test or bench: `CARGO_TARGET_DIR`, else the
/// nearest ancestor of the executable that holds cargo's `CACHEDIR.TAG`, else the
/// workspace's `target`.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.ancestors().find(|d| d.join("CACHEDIR.TAG").is_file())
    {
        return dir.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target")
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The SHA-256 of `file` as lowercase hex, by `sha256sum` (coreutils: every machine that runs
/// the tests has it, and no hashing crate is needed for one check per run).
fn sha256(file: &Path) -> io::Result<String> {
    let out = Command::new("sha256sum").arg(file).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!("sha256sum {} failed: {}", file.display(), out.status)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| io::Error::other(format!("sha256sum printed nothing for {}", file.display())))
}

/// The expected checksum of `file_name` in the shared folder's `SHA256SUMS`.
fn expected_sum(dir: &Path, file_name: &str) -> io::Result<String> {
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS"))?;
    sums.lines()
        .filter_map(|line| line.split_once(char::is_whitespace))
        .find(|(_, name)| name.trim().trim_start_matches('*') == file_name)
        .map(|(sum, _)| sum.to_lowercase())
        .ok_or_else(|| io::Error::other(format!("{file_name} is not listed in {}/SHA256SUMS", dir.display())))
}

/// Decompresses `<shared>/<name>.xz` into `<target>/leasehold-servers/<name>-<sum prefix>`
/// unless that file exists already; the archive's checksum must match `SHA256SUMS`.
fn from_shared(name: &str) -> io::Result<Option<(PathBuf, PathBuf)>> {
    let dir = shared_servers_dir();
    let archive = dir.join(format!("{name}.xz"));
    if !archive.is_file() {
        return Ok(None);
    }
    let expected = expected_sum(&dir, &format!("{name}.xz"))?;
    let short = expected.get(..16).unwrap_or(&expected);
    let cache = target_dir().join("leasehold-servers");
    let out = cache.join(format!("{name}-{short}"));
    if is_executable(&out) {
        return Ok(Some((out, archive)));
    }
    let actual = sha256(&archive)?;
    if actual != expected {
        return Err(io::Error::other(format!(
            "{} has SHA-256 {actual}, SHA256SUMS says {expected}: refusing to run it",
            archive.display()
        )));
    }
    std::fs::create_dir_all(&cache)?;
    // Decompress to a private name, then rename: parallel tests never run a half-written file.
    // Private per call, not per process: the tests of one binary run on several threads, and
    // two of them sharing a name made the second rename fail (seen on a fresh checkout).
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let partial = cache.join(format!("{name}-{short}.{}-{call}.partial", std::process::id()));
    let file = std::fs::File::create(&partial)?;
    let status = Command::new("xz").arg("-dc").arg(&archive).stdout(file).status().map_err(|e| {
        io::Error::new(e.kind(), format!("running xz to decompress {} (install xz-utils): {e}", archive.display()))
    })?;
    if !status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(io::Error::other(format!("xz -dc {} failed: {status}", archive.display())));
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::rename(&partial, &out)?;
    Ok(Some((out, archive)))
}

/// Finds `name`: `$env_var`, then `PATH`, then the shared folder. `Ok(None)` when it is
/// nowhere; an error when the shared copy is there but broken (bad checksum, no `xz`).
pub fn find(name: &str, env_var: &'static str) -> io::Result<Option<ServerBinary>> {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        if !is_executable(&path) {
            return Err(io::Error::other(format!("{env_var}={} is not an executable file", path.display())));
        }
        return Ok(Some(ServerBinary { path, found: Found::Env(env_var) }));
    }
    if let Some(path) = on_path(name) {
        return Ok(Some(ServerBinary { path, found: Found::Path }));
    }
    Ok(from_shared(name)?.map(|(path, archive)| ServerBinary { path, found: Found::Shared(archive) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_looked_up_by_file_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("SHA256SUMS"), "abc  consul.xz\nDEF *kube-apiserver.xz\n").unwrap();
        assert_eq!(expected_sum(dir.path(), "consul.xz").unwrap(), "abc");
        assert_eq!(expected_sum(dir.path(), "kube-apiserver.xz").unwrap(), "def");
        assert!(expected_sum(dir.path(), "etcd.xz").unwrap_err().to_string().contains("not listed"));
    }

    #[test]
    fn checksums_and_executables() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("abc");
        std::fs::write(&file, "abc").unwrap();
        assert_eq!(sha256(&file).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(!is_executable(&file), "a plain file is not executable");
        assert!(is_executable(Path::new("/bin/sh")));
    }
}
