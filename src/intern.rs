//! Interning: equal values that are built many times share one allocation.
//!
//! The replicas of a workload carry the same labels and the same container
//! ports. Held as a `BTreeMap<String, String>` per pod, labels were most of
//! a pod's memory (a B-tree node plus a string per key and per value, about
//! 800 bytes at five labels); interned, replicas share one sorted slice and
//! a pod holds a pointer, and cloning a pod (the agent's snapshot) costs a
//! reference count instead of a dozen allocations.
//!
//! The tables are process-wide, so the loader's threads, the agent's index
//! and tests share them alike. They are swept of values nobody else holds
//! whenever they have doubled since the last sweep, so churn (every rollout
//! brings a new `pod-template-hash`) cannot grow them without bound: they
//! stay within twice the live distinct values. Interning is invisible to
//! semantics: interned values compare, hash and order by content.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

/// Below this many values a table is never swept.
const SWEEP_MIN: usize = 1024;

/// Interned slices, looked up by content.
pub struct Slices<U> {
    inner: Mutex<(HashSet<Arc<[U]>>, usize)>,
}

impl<U: Hash + Eq> Default for Slices<U> {
    fn default() -> Self {
        Slices { inner: Mutex::new((HashSet::new(), SWEEP_MIN)) }
    }
}

impl<U: Hash + Eq> Slices<U> {
    /// The shared slice equal to `v`.
    pub fn intern(&self, v: Vec<U>) -> Arc<[U]> {
        let mut guard = lock(&self.inner);
        let (set, sweep_at) = &mut *guard;
        if let Some(hit) = set.get(v.as_slice()) {
            return hit.clone();
        }
        let new: Arc<[U]> = v.into();
        set.insert(new.clone());
        if set.len() >= *sweep_at {
            set.retain(|a| Arc::strong_count(a) > 1);
            *sweep_at = (2 * set.len()).max(SWEEP_MIN);
        }
        new
    }

    /// Values held (for tests).
    pub fn len(&self) -> usize {
        lock(&self.inner).0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Interned sorted string pairs (label sets), looked up from borrowed
/// pairs: a set already interned costs a hash and a comparison, no
/// allocation.
pub struct Pairs {
    inner: Mutex<PairsInner>,
}

type PairSlice = Arc<[(Box<str>, Box<str>)]>;

struct PairsInner {
    hasher: RandomState,
    buckets: HashMap<u64, Vec<PairSlice>>,
    len: usize,
    sweep_at: usize,
}

impl Default for Pairs {
    fn default() -> Self {
        Pairs { inner: Mutex::new(PairsInner { hasher: RandomState::new(), buckets: HashMap::new(), len: 0, sweep_at: SWEEP_MIN }) }
    }
}

impl Pairs {
    /// The shared slice holding `pairs`, in their order.
    pub fn intern<'a, I>(&self, pairs: I) -> PairSlice
    where
        I: Iterator<Item = (&'a str, &'a str)> + Clone,
    {
        let mut guard = lock(&self.inner);
        let t = &mut *guard;
        let mut h = t.hasher.build_hasher();
        for (k, v) in pairs.clone() {
            k.hash(&mut h);
            v.hash(&mut h);
        }
        let bucket = t.buckets.entry(h.finish()).or_default();
        let same = |s: &PairSlice| s.len() == pairs.clone().count() && s.iter().zip(pairs.clone()).all(|((k, v), (a, b))| **k == *a && **v == *b);
        if let Some(hit) = bucket.iter().find(|s| same(s)) {
            return hit.clone();
        }
        let new: PairSlice = pairs.map(|(k, v)| (Box::from(k), Box::from(v))).collect();
        bucket.push(new.clone());
        t.len += 1;
        if t.len >= t.sweep_at {
            t.buckets.retain(|_, b| {
                b.retain(|s| Arc::strong_count(s) > 1);
                !b.is_empty()
            });
            t.len = t.buckets.values().map(Vec::len).sum();
            t.sweep_at = (2 * t.len).max(SWEEP_MIN);
        }
        new
    }

    /// Values held (for tests).
    pub fn len(&self) -> usize {
        lock(&self.inner).len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every operation leaves a table consistent, so a panic elsewhere while
    // it was held does not make it unusable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_allocation() {
        let t = Pairs::default();
        let a = t.intern([("app", "web"), ("tier", "front")].into_iter());
        let b = t.intern([("app", "web"), ("tier", "front")].into_iter());
        let c = t.intern([("app", "web")].into_iter());
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!((t.len(), &*c[0].0, &*c[0].1), (2, "app", "web"));
        let s = Slices::default();
        let x = s.intern(vec![1, 2]);
        assert!(Arc::ptr_eq(&x, &s.intern(vec![1, 2])));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn values_nobody_holds_are_swept_as_the_table_grows() {
        let t = Pairs::default();
        let kept = t.intern([("keep", "me")].into_iter());
        // Churn: many sets, each dropped at once (a rollout's hashes).
        for i in 0..10 * SWEEP_MIN {
            let v = i.to_string();
            drop(t.intern([("pod-template-hash", v.as_str())].into_iter()));
        }
        assert!(t.len() < 2 * SWEEP_MIN + 1, "{} values held", t.len());
        assert!(Arc::ptr_eq(&kept, &t.intern([("keep", "me")].into_iter())), "a held value survives sweeps");
        let s = Slices::default();
        let held: Vec<_> = (0..SWEEP_MIN as u32).map(|i| s.intern(vec![i])).collect();
        for i in 0..10 * SWEEP_MIN as u32 {
            drop(s.intern(vec![u32::MAX - i]));
        }
        assert!(s.len() < 3 * SWEEP_MIN, "{} values held", s.len());
        assert!(held.iter().enumerate().all(|(i, h)| Arc::ptr_eq(h, &s.intern(vec![i as u32]))));
    }
}
