//! A hash map split into shards that grow one at a time. A single table holding a million
//! routes doubles in one step, and for that moment its old and new arrays are both
//! resident (at 1M IPv4 routes, 26 MiB next to 52 MiB): that moment is the speaker's peak
//! RSS. Split 64 ways, the same table doubles one sixty-fourth at a time, so the peak is
//! about the steady size. Keys are hashed once (foldhash, seeded per process: peers choose
//! the keys), and the shard is taken from hash bits the shard's own table does not use.

use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;

const SHARDS: usize = 64;

/// Which shard: bits 32..38 of the hash. A shard's table takes its bucket from the low
/// bits and its tag from the top seven, so these stay random within a shard.
fn shard_of(hash: u64) -> usize {
    (hash >> 32) as usize % SHARDS
}

/// A map in [`SHARDS`] independently growing tables.
#[derive(Clone)]
pub struct ShardedMap<K, V> {
    hasher: foldhash::fast::RandomState,
    shards: Vec<HashTable<(K, V)>>,
    len: usize,
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap {
            hasher: foldhash::fast::RandomState::default(),
            shards: (0..SHARDS).map(|_| HashTable::new()).collect(),
            len: 0,
        }
    }
}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for ShardedMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    fn locate(&self, key: &K) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        (hash, shard_of(hash))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value for `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        let (hash, s) = self.locate(key);
        self.shards[s].find(hash, |(k, _)| k == key).map(|(_, v)| v)
    }

    /// The value for `key`, to change.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let (hash, s) = self.locate(key);
        self.shards[s]
            .find_mut(hash, |(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// The value for `key`, inserted as `V::default()` when absent.
    pub fn get_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        let (hash, s) = self.locate(&key);
        let hasher = &self.hasher;
        let entry = self.shards[s].entry(hash, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k));
        let occupied = match entry {
            hashbrown::hash_table::Entry::Occupied(o) => o,
            hashbrown::hash_table::Entry::Vacant(v) => {
                self.len += 1;
                v.insert((key, V::default()))
            }
        };
        &mut occupied.into_mut().1
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let (hash, s) = self.locate(&key);
        let hasher = &self.hasher;
        match self.shards[s].entry(hash, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k)) {
            hashbrown::hash_table::Entry::Occupied(mut o) => {
                Some(std::mem::replace(&mut o.get_mut().1, value))
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert((key, value));
                self.len += 1;
                None
            }
        }
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (hash, s) = self.locate(key);
        let found = self.shards[s].find_entry(hash, |(k, _)| k == key).ok()?;
        self.len -= 1;
        Some(found.remove().0.1)
    }

    /// Keeps the entries `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        let mut len = 0;
        for shard in &mut self.shards {
            shard.retain(|(k, v)| keep(k, v));
            len += shard.len();
        }
        self.len = len;
    }

    /// Removes everything (and gives the memory back).
    pub fn clear(&mut self) {
        for shard in &mut self.shards {
            *shard = HashTable::new();
        }
        self.len = 0;
    }
}

impl<K, V> ShardedMap<K, V> {
    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards
            .iter()
            .flat_map(|s| s.iter().map(|(k, v)| (k, v)))
    }

    /// Every key.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    /// Every value.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// Every value, to change.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.shards
            .iter_mut()
            .flat_map(|s| s.iter_mut().map(|(_, v)| v))
    }
}

/// A set in independently growing shards (a [`ShardedMap`] to `()`).
#[derive(Clone, Debug)]
pub struct ShardedSet<K>(ShardedMap<K, ()>);

impl<K> Default for ShardedSet<K> {
    fn default() -> Self {
        ShardedSet(ShardedMap::default())
    }
}

impl<K: Hash + Eq> ShardedSet<K> {
    /// Adds `key`; true when it was not there.
    pub fn insert(&mut self, key: K) -> bool {
        self.0.insert(key, ()).is_none()
    }

    /// Removes `key`; true when it was there.
    pub fn remove(&mut self, key: &K) -> bool {
        self.0.remove(key).is_some()
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &K) -> bool {
        self.0.contains_key(key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Every key, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &K> {
        self.0.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_map_across_shards() {
        let mut m: ShardedMap<u32, u32> = ShardedMap::default();
        for i in 0..10_000 {
            assert_eq!(m.insert(i, i * 2), None);
        }
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.insert(7, 1), Some(14));
        assert_eq!(m.get(&7), Some(&1));
        *m.get_or_default(7) += 1;
        *m.get_or_default(20_000) += 5;
        assert_eq!(
            (m.get(&7), m.get(&20_000), m.len()),
            (Some(&2), Some(&5), 10_001)
        );
        assert_eq!(m.remove(&20_000), Some(5));
        assert_eq!(m.remove(&20_000), None);
        m.retain(|k, v| {
            *v += 1;
            k % 2 == 0
        });
        assert_eq!(m.len(), 5_000);
        assert_eq!(m.iter().count(), 5_000);
        assert_eq!(m.get(&8), Some(&17));
        assert!(m.get(&9).is_none());
        // Every shard takes a share: the shard bits are random.
        assert!(
            m.shards.iter().all(|s| s.len() > 20),
            "{:?}",
            m.shards.iter().map(HashTable::len).collect::<Vec<_>>()
        );
        m.clear();
        assert!(m.is_empty() && m.iter().next().is_none());
    }

    #[test]
    fn a_set_counts_what_it_holds() {
        let mut s: ShardedSet<u64> = ShardedSet::default();
        assert!(s.insert(1) && !s.insert(1) && s.insert(2));
        assert!(s.contains(&1) && s.remove(&1) && !s.remove(&1));
        assert_eq!(
            (s.len(), s.iter().copied().collect::<Vec<_>>()),
            (1, vec![2])
        );
    }
}
