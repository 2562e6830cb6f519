//! UDP sessions of one worker: a client (its address and port, on one
//! listener) pinned to an upstream endpoint through a local port of ours.
//! Sans-IO bookkeeping only: found by client (a datagram from it) or by
//! local port (a reply to it), kept in idle order per listener so expiry
//! looks at the oldest session of each listener and nothing else.
//!
//! The caller bounds sessions per listener (`count`) and owns `T`, the
//! session's own data (endpoint, counters).

use std::collections::HashMap;
use std::net::SocketAddr;

use ferrogate_net::Instant;

/// A session's index, stable while it lives.
pub type SessionId = u32;

const NIL: u32 = u32::MAX;

struct Slot<T> {
    listener: u16,
    client: SocketAddr,
    local_port: u16,
    expires: Instant,
    prev: u32,
    next: u32,
    data: Option<T>,
}

/// Sessions of one listener, least recently active first.
#[derive(Clone, Copy)]
struct Order {
    listener: u16,
    head: u32,
    tail: u32,
    len: usize,
}

pub struct SessionTable<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    by_client: HashMap<(u16, SocketAddr), u32>,
    by_port: HashMap<u16, u32>,
    orders: Vec<Order>,
}

impl<T> Default for SessionTable<T> {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl<T> SessionTable<T> {
    /// Room for `n` sessions before the first allocation.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            slots: Vec::with_capacity(n),
            free: Vec::with_capacity(n),
            by_client: HashMap::with_capacity(n),
            by_port: HashMap::with_capacity(n),
            orders: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    /// Sessions open on `listener`.
    pub fn count(&self, listener: u16) -> usize {
        self.orders
            .iter()
            .find(|o| o.listener == listener)
            .map_or(0, |o| o.len)
    }

    pub fn by_client(&self, listener: u16, client: SocketAddr) -> Option<SessionId> {
        self.by_client.get(&(listener, client)).copied()
    }

    pub fn by_port(&self, local_port: u16) -> Option<SessionId> {
        self.by_port.get(&local_port).copied()
    }

    pub fn get(&self, id: SessionId) -> Option<&T> {
        self.slots.get(id as usize)?.data.as_ref()
    }

    pub fn get_mut(&mut self, id: SessionId) -> Option<&mut T> {
        self.slots.get_mut(id as usize)?.data.as_mut()
    }

    /// The listener, client and local port of a live session.
    pub fn key(&self, id: SessionId) -> Option<(u16, SocketAddr, u16)> {
        let s = self.slots.get(id as usize)?;
        s.data.as_ref()?;
        Some((s.listener, s.client, s.local_port))
    }

    /// A new session (the caller checked there is none for `client` on
    /// `listener`, and that `local_port` is its own), idle until `expires`.
    pub fn insert(
        &mut self,
        listener: u16,
        client: SocketAddr,
        local_port: u16,
        expires: Instant,
        data: T,
    ) -> SessionId {
        let slot = Slot {
            listener,
            client,
            local_port,
            expires,
            prev: NIL,
            next: NIL,
            data: Some(data),
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = slot;
                id
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.by_client.insert((listener, client), id);
        self.by_port.insert(local_port, id);
        self.link_tail(id);
        id
    }

    /// Activity: the session is now idle until `expires` (and the most
    /// recently active of its listener).
    pub fn touch(&mut self, id: SessionId, expires: Instant) {
        if self.slots[id as usize].data.is_none() {
            return;
        }
        self.unlink(id);
        self.slots[id as usize].expires = expires;
        self.link_tail(id);
    }

    /// Ends a session; its data back to the caller.
    pub fn remove(&mut self, id: SessionId) -> Option<T> {
        let s = self.slots.get_mut(id as usize)?;
        let data = s.data.take()?;
        let (listener, client, port) = (s.listener, s.client, s.local_port);
        self.by_client.remove(&(listener, client));
        self.by_port.remove(&port);
        self.unlink(id);
        self.free.push(id);
        Some(data)
    }

    /// When the next session expires (the earliest head of the listeners).
    pub fn next_expiry(&self) -> Option<Instant> {
        self.orders
            .iter()
            .filter(|o| o.head != NIL)
            .map(|o| self.slots[o.head as usize].expires)
            .min()
    }

    /// A session idle past its expiry at `now`, if any.
    pub fn expired(&self, now: Instant) -> Option<SessionId> {
        self.orders
            .iter()
            .filter(|o| o.head != NIL)
            .map(|o| o.head)
            .find(|&h| self.slots[h as usize].expires <= now)
    }

    /// Every live session (for a reload or a stop).
    pub fn ids(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.data.is_some())
            .map(|(i, _)| i as u32)
    }

    fn order_of(&mut self, listener: u16) -> usize {
        match self.orders.iter().position(|o| o.listener == listener) {
            Some(i) => i,
            None => {
                self.orders.push(Order {
                    listener,
                    head: NIL,
                    tail: NIL,
                    len: 0,
                });
                self.orders.len() - 1
            }
        }
    }

    fn link_tail(&mut self, id: u32) {
        let o = self.order_of(self.slots[id as usize].listener);
        let tail = self.orders[o].tail;
        self.slots[id as usize].prev = tail;
        self.slots[id as usize].next = NIL;
        if tail == NIL {
            self.orders[o].head = id;
        } else {
            self.slots[tail as usize].next = id;
        }
        self.orders[o].tail = id;
        self.orders[o].len += 1;
    }

    fn unlink(&mut self, id: u32) {
        let o = self.order_of(self.slots[id as usize].listener);
        let (prev, next) = (self.slots[id as usize].prev, self.slots[id as usize].next);
        if prev == NIL {
            self.orders[o].head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.orders[o].tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
        self.slots[id as usize].prev = NIL;
        self.slots[id as usize].next = NIL;
        self.orders[o].len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms as i64)
    }

    fn client(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 77, 0, 2], port))
    }

    #[test]
    fn a_session_is_found_by_client_and_by_local_port_until_removed() {
        let mut t = SessionTable::with_capacity(4);
        let id = t.insert(53, client(4000), 61_000, at(100), "a");
        assert_eq!(t.by_client(53, client(4000)), Some(id));
        assert_eq!(t.by_client(54, client(4000)), None, "another listener");
        assert_eq!(t.by_port(61_000), Some(id));
        assert_eq!(t.key(id), Some((53, client(4000), 61_000)));
        assert_eq!(t.count(53), 1);
        assert_eq!(t.remove(id), Some("a"));
        assert_eq!(t.remove(id), None, "twice");
        assert_eq!(
            (t.by_client(53, client(4000)), t.by_port(61_000)),
            (None, None)
        );
        assert_eq!((t.count(53), t.len()), (0, 0));
        let again = t.insert(53, client(4001), 61_001, at(100), "b");
        assert_eq!(again, id, "the slot is reused");
    }

    #[test]
    fn expiry_follows_activity_not_creation() {
        let mut t = SessionTable::with_capacity(4);
        let a = t.insert(53, client(1), 61_001, at(100), ());
        let b = t.insert(53, client(2), 61_002, at(150), ());
        assert_eq!(t.next_expiry(), Some(at(100)));
        t.touch(a, at(200));
        assert_eq!(t.next_expiry(), Some(at(150)));
        assert_eq!(t.expired(at(149)), None);
        assert_eq!(t.expired(at(150)), Some(b));
        t.remove(b);
        assert_eq!(t.expired(at(150)), None);
        assert_eq!(t.expired(at(200)), Some(a));
        t.remove(a);
        assert_eq!(t.next_expiry(), None);
    }

    #[test]
    fn listeners_are_counted_and_expired_apart() {
        let mut t = SessionTable::with_capacity(4);
        let slow = t.insert(53, client(1), 61_001, at(1_000), ());
        let fast = t.insert(514, client(1), 61_002, at(10), ());
        assert_eq!((t.count(53), t.count(514)), (1, 1));
        assert_eq!(
            t.expired(at(10)),
            Some(fast),
            "not behind the other listener's head"
        );
        t.remove(fast);
        assert_eq!(t.ids().collect::<Vec<_>>(), vec![slow]);
    }

    #[test]
    fn many_sessions_stay_consistent() {
        let mut t = SessionTable::with_capacity(8);
        let mut live = Vec::new();
        for i in 0..200u16 {
            live.push(t.insert(53, client(i), 60_000 + i, at(i as u64), i));
            if i % 3 == 0 {
                let id = live.remove(live.len() / 2);
                assert!(t.remove(id).is_some());
            }
            if i % 5 == 0
                && let Some(&id) = live.first()
            {
                t.touch(id, at(10_000 + i as u64));
            }
        }
        assert_eq!(t.len(), live.len());
        assert_eq!(t.count(53), live.len());
        let mut n = 0;
        while let Some(id) = t.expired(at(100_000)) {
            assert!(t.remove(id).is_some());
            n += 1;
        }
        assert_eq!(n, live.len());
        assert!(t.is_empty());
    }
}
