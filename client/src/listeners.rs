//! Listener lists with owned subscriptions: a [`Subscription`] removes its listener when it is
//! dropped (or [`Subscription::unsubscribe`]d), and [`Listeners::clear`] drops them all at once
//! (on `close()`), so no callback outlives the client.
//!
//! ```
//! use std::{cell::Cell, rc::Rc};
//! use tidewire_client::listeners::Listeners;
//! let list: Listeners<u32> = Listeners::new();
//! let seen = Rc::new(Cell::new(0));
//! let s = seen.clone();
//! let sub = list.add(move |v| s.set(s.get() + *v));
//! list.emit(&2);
//! drop(sub);
//! list.emit(&40);
//! assert_eq!(seen.get(), 2);
//! ```

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

type Callback<T> = Rc<dyn Fn(&T)>;

struct List<T> {
    next_id: u64,
    entries: Vec<(u64, Callback<T>)>,
}

/// A list of callbacks for values of type `T`.
pub struct Listeners<T> {
    list: Rc<RefCell<List<T>>>,
}

impl<T> Clone for Listeners<T> {
    fn clone(&self) -> Self {
        Listeners {
            list: self.list.clone(),
        }
    }
}

impl<T: 'static> Default for Listeners<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: 'static> Listeners<T> {
    /// An empty list.
    pub fn new() -> Self {
        Listeners {
            list: Rc::new(RefCell::new(List {
                next_id: 0,
                entries: Vec::new(),
            })),
        }
    }

    /// Adds a callback; it stays until the returned subscription is dropped.
    pub fn add(&self, f: impl Fn(&T) + 'static) -> Subscription {
        let id = {
            let mut l = self.list.borrow_mut();
            l.next_id += 1;
            let id = l.next_id;
            l.entries.push((id, Rc::new(f)));
            id
        };
        let weak: Weak<RefCell<List<T>>> = Rc::downgrade(&self.list);
        Subscription {
            remove: Some(Box::new(move || {
                if let Some(list) = weak.upgrade() {
                    list.borrow_mut().entries.retain(|(i, _)| *i != id);
                }
            })),
        }
    }

    /// Calls every callback with `value`. Callbacks may add or remove listeners while this runs;
    /// the change applies from the next call.
    pub fn emit(&self, value: &T) {
        let callbacks: Vec<Callback<T>> = self
            .list
            .borrow()
            .entries
            .iter()
            .map(|(_, f)| f.clone())
            .collect();
        for f in callbacks {
            f(value);
        }
    }

    /// Number of callbacks.
    pub fn len(&self) -> usize {
        self.list.borrow().entries.len()
    }

    /// Whether there is no callback.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every callback.
    pub fn clear(&self) {
        let entries = std::mem::take(&mut self.list.borrow_mut().entries);
        drop(entries);
    }
}

impl<T: Clone + 'static> Listeners<T> {
    /// The values as a [`futures::Stream`]; the listener goes away with the stream.
    pub fn stream(&self) -> ListenerStream<T> {
        let shared = Rc::new(RefCell::new((VecDeque::new(), None::<Waker>)));
        let s = shared.clone();
        let sub = self.add(move |v: &T| {
            let mut q = s.borrow_mut();
            q.0.push_back(v.clone());
            if let Some(w) = q.1.take() {
                w.wake();
            }
        });
        ListenerStream { shared, _sub: sub }
    }
}

/// A stream of the values emitted to a [`Listeners`] list. It never ends by itself.
pub struct ListenerStream<T> {
    #[allow(clippy::type_complexity)]
    shared: Rc<RefCell<(VecDeque<T>, Option<Waker>)>>,
    _sub: Subscription,
}

impl<T> futures::Stream for ListenerStream<T> {
    type Item = T;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut q = self.shared.borrow_mut();
        match q.0.pop_front() {
            Some(v) => Poll::Ready(Some(v)),
            None => {
                q.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Keeps a callback registered; dropping it removes the callback.
#[must_use = "dropping a Subscription removes its listener"]
pub struct Subscription {
    remove: Option<Box<dyn FnOnce()>>,
}

impl Subscription {
    /// Removes the callback now.
    pub fn unsubscribe(mut self) {
        if let Some(f) = self.remove.take() {
            f();
        }
    }

    /// Keeps the callback registered until the returned function is called or the list is
    /// cleared (the client's `close()`); dropping the function does not remove it. This is
    /// what JavaScript handles use, so that garbage collection never silences a listener.
    pub fn detach(mut self) -> Box<dyn FnOnce()> {
        self.remove.take().unwrap_or_else(|| Box::new(|| {}))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(f) = self.remove.take() {
            f();
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::cell::Cell;

    #[test]
    fn clear_and_reentrancy() {
        let list: Listeners<u8> = Listeners::new();
        let count = Rc::new(Cell::new(0));
        let (l2, c2) = (list.clone(), count.clone());
        let kept = Rc::new(RefCell::new(Vec::new()));
        let k2 = kept.clone();
        let _a = list.add(move |_| {
            c2.set(c2.get() + 1);
            // Adding during emit must not deadlock or double-borrow.
            k2.borrow_mut().push(l2.add(|_| {}));
        });
        list.emit(&1);
        assert_eq!(count.get(), 1);
        assert_eq!(list.len(), 2);
        list.clear();
        list.emit(&1);
        assert_eq!(count.get(), 1);
        assert!(list.is_empty());
    }

    #[test]
    fn detached_listener_stays_until_removed() {
        let list: Listeners<u8> = Listeners::new();
        let remove = list.add(|_| {}).detach();
        assert_eq!(list.len(), 1);
        remove();
        assert!(list.is_empty());
        let remove = list.add(|_| {}).detach();
        drop(remove);
        assert_eq!(list.len(), 1, "dropping the remover keeps the listener");
    }

    #[test]
    fn stream_yields_in_order() {
        let list: Listeners<u8> = Listeners::new();
        let mut s = list.stream();
        list.emit(&1);
        list.emit(&2);
        let got: Vec<u8> = futures::executor::block_on(async {
            vec![s.next().await.unwrap(), s.next().await.unwrap()]
        });
        assert_eq!(got, vec![1, 2]);
        drop(s);
        assert!(list.is_empty());
    }
}
