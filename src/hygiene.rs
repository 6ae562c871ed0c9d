//! Process hygiene: everything the broker writes about itself goes through the redactor
//! (logs, panic messages), and the process keeps other processes out of its memory.

use std::io::Write;
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;

use crate::scrub::Redactor;

/// Process hardening could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum HardeningError {
    /// A system call failed.
    #[error("{what}: {source}")]
    Syscall {
        /// What was attempted.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// No core dumps, no ptrace attach or `/proc/<pid>/mem` reads by other processes of the same
/// user, and, when asked, all memory locked so keys are never swapped out.
pub fn harden_process(mlock: bool) -> Result<(), HardeningError> {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    let err = |what| {
        move |e: rustix::io::Errno| HardeningError::Syscall {
            what,
            source: e.into(),
        }
    };
    set_dumpable_behavior(DumpableBehavior::NotDumpable)
        .map_err(err("prctl(PR_SET_DUMPABLE, 0)"))?;
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .map_err(err("setrlimit(RLIMIT_CORE, 0)"))?;
    if mlock {
        use rustix::mm::{MlockAllFlags, mlockall};
        mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE).map_err(err(
            "mlockall (raise `ulimit -l` or turn security.mlock off)",
        ))?;
    }
    Ok(())
}

/// A `tracing` writer to stderr that redacts each formatted event before it is written.
#[derive(Clone)]
pub struct RedactingStderr {
    redactor: Arc<Redactor>,
}

impl RedactingStderr {
    /// Redact with `redactor`.
    pub fn new(redactor: Arc<Redactor>) -> Self {
        RedactingStderr { redactor }
    }
}

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingStderr;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Write for RedactingStderr {
    /// `tracing-subscriber` formats a whole event and writes it in one call, so a secret is
    /// never split across two writes.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().write_all(&self.redactor.redact_text(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Print panics redacted: a panic message must not carry a secret or a token out.
pub fn install_panic_hook(redactor: Arc<Redactor>) {
    std::panic::set_hook(Box::new(move |info| {
        let text = format!("seks panicked: {info}\n");
        let _ = std::io::stderr().write_all(&redactor.redact_text(text.as_bytes()));
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardening_makes_the_process_undumpable_without_core_files() {
        harden_process(false).unwrap();
        assert_eq!(
            rustix::process::dumpable_behavior().unwrap(),
            rustix::process::DumpableBehavior::NotDumpable
        );
        let core = rustix::process::getrlimit(rustix::process::Resource::Core);
        assert_eq!((core.current, core.maximum), (Some(0), Some(0)));
    }
}
