//! Containment for parsers of untrusted input: a panic inside one becomes an
//! error about that input, and one that never returns is abandoned after a
//! time bound, so a crafted file on a victim disk cannot stop the run.
//!
//! PID 1 installs a panic hook that reboots the machine (a panic there must
//! never reach the kernel). That hook runs *before* unwinding, so a plain
//! `catch_unwind` around a parser never gets the chance: [`contain`] marks
//! the thread as guarded, and [`panic_is_contained`] tells the hook to let
//! the unwind go on to the guard instead. The time bound runs the parser on
//! its own thread; a thread that loops forever is left behind (it costs a
//! core, not the run) and the caller is told which input it was.
//!
//! Not a sandbox: a parser can still allocate without bound or corrupt
//! memory through `unsafe`. The parsers here are safe Rust with capped
//! reads; this catches the bugs they still have.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::Duration;

thread_local! {
    /// How many [`contain`] calls this thread is inside.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// True when the current thread is inside [`contain`]: a panic hook should
/// then only let the unwind continue (the guard turns it into an error).
pub fn panic_is_contained() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

/// Why a contained parser gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Contained {
    /// It panicked; the message, when it had one.
    #[error("{what}: the parser failed on this input ({msg}); it was not used")]
    Panicked { what: String, msg: String },
    /// It did not return within the bound.
    #[error("{what}: the parser did not finish within {secs} s; it was not used")]
    TimedOut { what: String, secs: u64 },
}

struct Depth;

impl Depth {
    fn enter() -> Depth {
        DEPTH.with(|d| d.set(d.get() + 1));
        Depth
    }
}

impl Drop for Depth {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

fn message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Runs `f` on this thread; a panic becomes [`Contained::Panicked`] naming
/// `what` (the file or record it was reading).
pub fn contain<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, Contained> {
    let _d = Depth::enter();
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| Contained::Panicked {
        what: what.to_string(),
        msg: message(&*p),
    })
}

/// Runs `f` on its own thread, contained, and waits at most `bound`.
pub fn contain_for<T: Send + 'static>(
    what: &str,
    bound: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Contained> {
    let (tx, rx) = mpsc::sync_channel(1);
    let name = what.to_string();
    let spawned = std::thread::Builder::new()
        .name("defib-parser".into())
        .spawn(move || {
            let _ = tx.send(contain(&name, f));
        });
    if spawned.is_err() {
        // No thread to be had (out of memory): say so rather than run
        // without the bound.
        return Err(Contained::Panicked {
            what: what.to_string(),
            msg: "no thread could be started for it".into(),
        });
    }
    match rx.recv_timeout(bound) {
        Ok(r) => r,
        Err(_) => Err(Contained::TimedOut {
            what: what.to_string(),
            secs: bound.as_secs(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_panic_becomes_an_error_naming_the_input() {
        let e = contain("Quarantine\\x.bup", || -> u32 {
            panic!("index out of range")
        })
        .unwrap_err();
        assert!(matches!(e, Contained::Panicked { .. }));
        let s = e.to_string();
        assert!(
            s.contains("Quarantine\\x.bup") && s.contains("index out of range"),
            "{s}"
        );
        assert!(!panic_is_contained(), "the mark is gone after the guard");
        assert_eq!(contain("ok", || 7).unwrap(), 7);
    }

    /// The bug the guard exists for: PID 1's hook reboots on any panic, so
    /// it must see that the panic is contained and let the unwind reach the
    /// guard. Here a hook records what it saw instead of rebooting.
    #[test]
    fn a_reboot_hook_lets_a_contained_panic_through() {
        let saw = Arc::new(AtomicBool::new(false));
        let s = saw.clone();
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |_| {
            if panic_is_contained() {
                s.store(true, Ordering::SeqCst);
            }
        }));
        let r = contain("x", || -> () { panic!("boom") });
        std::panic::set_hook(prev);
        assert!(r.is_err());
        assert!(saw.load(Ordering::SeqCst), "the hook saw a contained panic");
    }

    #[test]
    fn a_parser_that_never_returns_is_abandoned() {
        let e = contain_for("hive", Duration::from_millis(50), || loop {
            std::thread::sleep(Duration::from_millis(10));
        })
        .map(|_: ()| ())
        .unwrap_err();
        assert!(matches!(e, Contained::TimedOut { .. }), "{e}");
        let ok = contain_for("hive", Duration::from_secs(5), || 3).unwrap();
        assert_eq!(ok, 3);
        let p = contain_for("hive", Duration::from_secs(5), || -> u8 { panic!("x") });
        assert!(matches!(p, Err(Contained::Panicked { .. })));
    }
}
