//! What the backends' real-server harnesses (`leasehold-consul`'s and `leasehold-kube`'s
//! `testing` features) share: finding a server binary ([`find`]: an environment variable,
//! then `PATH`, then `../shared/servers/*.xz` checked against `SHA256SUMS` and decompressed
//! once) and running it as a [`Guarded`] child on a [`free_port`], killed by pid on drop; and a
//! [`CutProxy`] that cuts the network between a client and its server; a throwaway PKI for
//! the TLS tests ([`make_pki`]); with feature `scale`, the store-independent half of the
//! backends' scale benches (`scale`).

mod binary;
mod pki;
mod process;
mod proxy;
#[cfg(feature = "scale")]
pub mod scale;

pub use binary::{Found, ServerBinary, find, shared_servers_dir};
pub use pki::{Pki, make_pki};
pub use process::{Guarded, free_port};
pub use proxy::{CutProxy, RequestLines};
