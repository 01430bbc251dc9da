//! `/dev/watchdog` on Linux; the one `unsafe` block of the crate (an ioctl) lives here.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// `/dev/watchdog` (Linux watchdog API): armed by opening the device, timeout set with
/// `WDIOC_SETTIMEOUT`, kept alive by writes, disarmed with the magic `V` before close.
#[derive(Debug)]
pub struct LinuxWatchdog {
    path: PathBuf,
    file: Option<File>,
}

impl LinuxWatchdog {
    /// A watchdog on `path` (usually `/dev/watchdog`); nothing is opened until armed.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LinuxWatchdog { path: path.into(), file: None }
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_timeout(file: &File, secs: i32) -> std::io::Result<i32> {
    use std::os::fd::AsRawFd;
    // _IOWR('W', 6, int)
    const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;
    let mut value: libc::c_int = secs;
    // SAFETY: the fd is open for the lifetime of `file`, and the ioctl reads and writes
    // exactly one c_int through the pointer, which lives on this stack frame.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), WDIOC_SETTIMEOUT as _, &mut value) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(value) }
}

#[cfg(not(target_os = "linux"))]
fn set_timeout(_: &File, _: i32) -> std::io::Result<i32> {
    Err(std::io::Error::other("watchdog devices are only supported on Linux"))
}

impl super::Watchdog for LinuxWatchdog {
    fn arm(&mut self, timeout: Duration) -> std::io::Result<()> {
        if self.file.is_some() {
            return Ok(());
        }
        let file = OpenOptions::new().write(true).open(&self.path)?;
        let wanted = timeout.as_secs().max(1) as i32;
        let got = set_timeout(&file, wanted)?;
        self.file = Some(file);
        if got > wanted {
            // The device cannot fire early enough to protect the lease.
            let _ = super::Watchdog::disarm(self);
            return Err(std::io::Error::other(format!(
                "watchdog timeout is {got}s but the lease needs {wanted}s or less"
            )));
        }
        Ok(())
    }

    fn keepalive(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.write_all(b"1"),
            None => Ok(()),
        }
    }

    fn disarm(&mut self) -> std::io::Result<()> {
        match self.file.take() {
            Some(mut f) => f.write_all(b"V"),
            None => Ok(()),
        }
    }
}
