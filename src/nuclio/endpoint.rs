//! What the launcher and every transport share about one wrapper's event
//! endpoint: whose turn it is to be accepted, the connections it started for
//! connects that were given up, and how many events are in flight.
//!
//! The [`NuclioLauncher`] makes the state of each wrapper it starts and
//! attaches it to the wrapper's handle, where the [`NuclioTransport`] finds
//! it ([`WorkerInfo::attachments`](crate::WorkerInfo::attachments)): it
//! belongs to that one wrapper, not to every pool of the host process. A
//! transport asked to connect to a bare address keeps a table of its own
//! ([`EndpointTable`]).
//!
//! [`NuclioTransport`]: super::NuclioTransport
//! [`NuclioLauncher`]: super::NuclioLauncher

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::{Mutex, MutexGuard};

use super::socket::Started;

/// The states of the endpoints one transport (and its clones) connected to by
/// address alone, while anyone holds them: a wrapper holds its port for as
/// long as it runs, so one address names one wrapper.
#[derive(Debug, Clone, Default)]
pub(crate) struct EndpointTable {
    states: Arc<parking_lot::Mutex<HashMap<SocketAddr, Weak<EndpointState>>>>,
}

impl EndpointTable {
    /// The state of the wrapper at `addr`, shared with everyone else who holds it.
    pub(crate) fn of(&self, addr: SocketAddr) -> Arc<EndpointState> {
        let mut states = self.states.lock();
        if let Some(state) = states.get(&addr).and_then(Weak::upgrade) {
            return state;
        }
        // Entries of wrappers nobody holds any more go as new ones come.
        states.retain(|_, state| state.strong_count() > 0);
        let state = Arc::new(EndpointState::default());
        states.insert(addr, Arc::downgrade(&state));
        state
    }
}

/// The shared state of one wrapper's event endpoint.
#[derive(Debug, Default)]
pub(crate) struct EndpointState {
    /// Held by the one connection that waits to be accepted. Some wrappers
    /// accept slowly (one connection per 0.2 s) and exit when a connection
    /// closes, even one they have not accepted yet; so the others wait here,
    /// with no socket open, and a connect given up while it waits costs the
    /// wrapper nothing. Tokio's mutex is fair: first come, first accepted.
    accept_turn: Mutex<()>,
    /// Events sent and not yet answered (or given up) on its connections.
    in_flight: AtomicUsize,
    /// Connections the wrapper started after the connect that opened them was
    /// given up, for the next connects to take.
    stashed: parking_lot::Mutex<Vec<Started>>,
}

impl EndpointState {
    /// A fresh state for a wrapper just started, to attach to its handle.
    pub(crate) fn fresh() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Waits for this connection's turn to be accepted.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped wait gives up its place in the queue.
    pub(crate) async fn accept_turn(&self) -> MutexGuard<'_, ()> {
        self.accept_turn.lock().await
    }

    /// Keeps a started connection nobody waits for any more.
    pub(crate) fn stash(&self, started: Started) {
        self.stashed.lock().push(started);
    }

    /// A started connection a given-up connect left behind, if there is one.
    pub(crate) fn take_stashed(&self) -> Option<Started> {
        self.stashed.lock().pop()
    }

    /// Counts an event in flight until the guard is dropped.
    pub(crate) fn event_in_flight(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// How many events are in flight on the wrapper's connections.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// One event in flight; dropping it (answered, failed or abandoned) uncounts it.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<EndpointState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_is_one_state_per_table_while_anyone_holds_it() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let table = EndpointTable::default();
        let first = table.of(addr);
        let second = table.clone().of(addr);
        assert!(Arc::ptr_eq(&first, &second));
        let guard = first.event_in_flight();
        assert_eq!(second.in_flight(), 1);
        drop(guard);
        assert_eq!(second.in_flight(), 0);
        // Another transport's table, or a launcher's fresh state, is apart.
        assert!(!Arc::ptr_eq(&first, &EndpointTable::default().of(addr)));
        assert!(!Arc::ptr_eq(&first, &EndpointState::fresh()));
        drop((first, second));
        let again = table.of(addr);
        assert_eq!(again.in_flight(), 0);
    }
}
