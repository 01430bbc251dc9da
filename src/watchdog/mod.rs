//! [`Watchdog`]: resets the machine if the leader stops renewing; [`NoWatchdog`] and the
//! Linux device ([`LinuxWatchdog`]).

mod linux;

use std::time::Duration;

pub use linux::LinuxWatchdog;

/// A hardware or software watchdog that resets the machine unless kept alive.
pub trait Watchdog: Send + 'static {
    /// Arm with a reset deadline of `timeout`. Fails if the device cannot do it.
    fn arm(&mut self, timeout: Duration) -> std::io::Result<()>;
    /// Restart the countdown.
    fn keepalive(&mut self) -> std::io::Result<()>;
    /// Disarm cleanly.
    fn disarm(&mut self) -> std::io::Result<()>;
}

/// No watchdog.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoWatchdog;

impl Watchdog for NoWatchdog {
    fn arm(&mut self, _: Duration) -> std::io::Result<()> {
        Ok(())
    }
    fn keepalive(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn disarm(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
