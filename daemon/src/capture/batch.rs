//! Draining a per-CPU hash map a batch at a time: `BPF_MAP_LOOKUP_AND_DELETE_BATCH`
//! (kernel 5.6+) reads and removes a few thousand entries per syscall, where a
//! walk costs a `get_next_key`, a lookup and a delete per entry. aya 0.14 has no
//! batch or lookup-and-delete calls, so they are made through `bpf(2)` here,
//! behind [`MapCommands`] so the buffer handling is tested without a kernel.
//! Kernels without the batch command (or without lookup-and-delete, 5.14) get
//! the same results one entry at a time.
use std::io;
use std::marker::PhantomData;
use std::os::fd::RawFd;

use super::assemble::{DrainSource, Taken};

/// The `bpf(2)` map commands a drain uses, on raw key and value bytes. A value
/// buffer of a per-CPU map holds one slot per possible CPU, each rounded up to
/// 8 bytes.
pub trait MapCommands {
    /// `BPF_MAP_LOOKUP_AND_DELETE_BATCH`: up to `count` entries into `keys` and
    /// `values`, resuming at `token` (`None`: from the start). Returns how many
    /// were filled and where to resume (`None`: the walk reached the end).
    fn lookup_and_delete_batch(
        &mut self,
        token: Option<u32>,
        keys: &mut [u8],
        values: &mut [u8],
        count: u32,
    ) -> io::Result<(u32, Option<u32>)>;
    /// `BPF_MAP_LOOKUP_AND_DELETE_ELEM`; `false` when the key is absent.
    fn lookup_and_delete(&mut self, key: &[u8], value: &mut [u8]) -> io::Result<bool>;
    /// `BPF_MAP_LOOKUP_ELEM`; `false` when the key is absent.
    fn lookup(&self, key: &[u8], value: &mut [u8]) -> io::Result<bool>;
    /// `BPF_MAP_DELETE_ELEM`; `false` when the key is absent.
    fn delete(&mut self, key: &[u8]) -> io::Result<bool>;
    /// `BPF_MAP_GET_NEXT_KEY` from no key: any key of the map; `false` when empty.
    fn first_key(&self, key: &mut [u8]) -> io::Result<bool>;
}

/// The kernel's answer to a command it does not have (EINVAL on kernels that
/// predate it; ENOTSUPP/EOPNOTSUPP for map types without it).
fn unsupported(err: &io::Error) -> bool {
    const ENOTSUPP: i32 = 524; // kernel-internal, leaks to user space from bpf(2)
    matches!(
        err.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

/// Bytes of one per-CPU slot of a `V` in the kernel's value buffers.
pub fn slot_stride<V>() -> usize {
    size_of::<V>().next_multiple_of(8)
}

/// A per-CPU hash map drained through [`MapCommands`], `K`/`V` decoded from
/// the kernel's bytes. Holds one batch buffer (`batch` entries), reused.
pub struct BatchDrain<C, K, V> {
    commands: C,
    cpus: usize,
    batch: usize,
    keys: Vec<u8>,
    values: Vec<u8>,
    token: Option<u32>,
    /// The batch walk reached the end of the map.
    done: bool,
    /// The kernel lacks the batch command / lookup-and-delete: one entry at a time.
    no_batch: bool,
    no_lookup_and_delete: bool,
    name: &'static str,
    _types: PhantomData<(K, V)>,
}

/// A command on map `map` failed.
#[derive(Debug, thiserror::Error)]
#[error("eBPF map {map}: {command}: {source}")]
pub struct BatchError {
    pub map: &'static str,
    pub command: &'static str,
    pub source: io::Error,
}

impl<C: MapCommands, K: Copy, V: Copy> BatchDrain<C, K, V> {
    /// `cpus`: possible CPUs (slots per value); `batch`: entries per syscall.
    pub fn new(commands: C, cpus: usize, batch: usize, name: &'static str) -> Self {
        let batch = batch.max(1);
        Self {
            commands,
            cpus: cpus.max(1),
            batch,
            keys: Vec::new(),
            values: Vec::new(),
            token: None,
            done: false,
            no_batch: false,
            no_lookup_and_delete: false,
            name,
            _types: PhantomData,
        }
    }

    fn value_len(&self) -> usize {
        slot_stride::<V>() * self.cpus
    }

    fn error(&self, command: &'static str, source: io::Error) -> BatchError {
        BatchError {
            map: self.name,
            command,
            source,
        }
    }

    /// The per-CPU slots in one value buffer.
    fn slots<'a>(&self, value: &'a [u8]) -> impl Iterator<Item = V> + 'a {
        let stride = slot_stride::<V>();
        (0..self.cpus)
            // SAFETY: V is plain data (aya::Pod on the caller's side); the slot
            // lies inside `value` (cpus * stride bytes, stride >= size_of V).
            .map(move |cpu| unsafe {
                std::ptr::read_unaligned(value[cpu * stride..].as_ptr().cast())
            })
    }

    fn key_at(&self, bytes: &[u8]) -> K {
        // SAFETY: K is plain data; `bytes` holds at least size_of K bytes.
        unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) }
    }

    fn take_batch(&mut self, n: usize) -> Result<Taken<K, V>, BatchError> {
        let n = n.min(self.batch);
        let (klen, vlen) = (size_of::<K>(), self.value_len());
        self.keys.resize(n * klen, 0);
        self.values.resize(n * vlen, 0);
        let mut out = Taken::default();
        // An empty answer with more to come (a bucket larger than the space
        // left is skipped to the next call) is retried from the new token.
        while out.is_empty() && !self.done {
            let (filled, next) = self
                .commands
                .lookup_and_delete_batch(self.token, &mut self.keys, &mut self.values, n as u32)
                .map_err(|e| self.error("lookup_and_delete_batch", e))?;
            self.token = next;
            self.done = next.is_none();
            if out.is_empty() {
                out = Taken::with_capacity(filled as usize, self.cpus);
            }
            for i in 0..filled as usize {
                let key = self.key_at(&self.keys[i * klen..]);
                out.push(key, self.slots(&self.values[i * vlen..(i + 1) * vlen]));
            }
        }
        Ok(out)
    }

    fn take_one(&mut self, key: &K) -> Result<Option<Vec<V>>, BatchError> {
        let mut value = vec![0u8; self.value_len()];
        // SAFETY: K is plain data: its bytes are what the kernel compares.
        let key_bytes =
            unsafe { std::slice::from_raw_parts((key as *const K).cast::<u8>(), size_of::<K>()) };
        if !self.no_lookup_and_delete {
            match self.commands.lookup_and_delete(key_bytes, &mut value) {
                Ok(found) => return Ok(found.then(|| self.slots(&value).collect())),
                Err(e) if unsupported(&e) => self.no_lookup_and_delete = true,
                Err(e) => return Err(self.error("lookup_and_delete", e)),
            }
        }
        let found = self
            .commands
            .lookup(key_bytes, &mut value)
            .map_err(|e| self.error("lookup", e))?;
        if !found {
            return Ok(None);
        }
        self.commands
            .delete(key_bytes)
            .map_err(|e| self.error("delete", e))?;
        Ok(Some(self.slots(&value).collect()))
    }
}

impl<C: MapCommands, K: Copy, V: Copy> DrainSource<K, V> for BatchDrain<C, K, V> {
    type Error = BatchError;

    fn take_many(&mut self, n: usize) -> Result<Taken<K, V>, BatchError> {
        if !self.no_batch {
            match self.take_batch(n) {
                Ok(out) => return Ok(out),
                Err(e) if unsupported(&e.source) && self.token.is_none() => {
                    tracing::debug!(
                        map = self.name,
                        "no batch map commands: one entry at a time"
                    );
                    self.no_batch = true;
                }
                Err(e) => return Err(e),
            }
        }
        let mut out = Taken::default();
        let mut key = vec![0u8; size_of::<K>()];
        while out.len() < n {
            let found = self
                .commands
                .first_key(&mut key)
                .map_err(|e| self.error("get_next_key", e))?;
            if !found {
                break;
            }
            let k = self.key_at(&key);
            match self.take_one(&k)? {
                Some(slots) => out.push(k, slots),
                // Listed but gone: nothing else empties this copy, so stop
                // rather than list it again.
                None => break,
            }
        }
        Ok(out)
    }

    fn take(&mut self, key: &K) -> Result<Option<Vec<V>>, BatchError> {
        self.take_one(key)
    }

    fn peek(&self, key: &K) -> Result<Option<Vec<V>>, BatchError> {
        let mut value = vec![0u8; self.value_len()];
        // SAFETY: as in take_one.
        let key_bytes =
            unsafe { std::slice::from_raw_parts((key as *const K).cast::<u8>(), size_of::<K>()) };
        let found = self
            .commands
            .lookup(key_bytes, &mut value)
            .map_err(|e| self.error("lookup", e))?;
        Ok(found.then(|| self.slots(&value).collect()))
    }
}

/// [`MapCommands`] through the `bpf(2)` syscall on a map's file descriptor.
pub struct SyscallMap {
    fd: RawFd,
}

impl SyscallMap {
    /// `fd` must stay open while this is used (the caller borrows the map).
    pub fn new(fd: RawFd) -> Self {
        Self { fd }
    }
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

/// `union bpf_attr` for the element commands.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for the batch commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<()> {
    // SAFETY: `attr` is a repr(C) prefix of union bpf_attr for `cmd`, its
    // pointers point at live buffers of the sizes the map was created with.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut A).cast::<libc::c_void>(),
            size_of::<A>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `Ok(false)` for ENOENT (no such key / no more keys).
fn found(r: io::Result<()>) -> io::Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

impl MapCommands for SyscallMap {
    fn lookup_and_delete_batch(
        &mut self,
        token: Option<u32>,
        keys: &mut [u8],
        values: &mut [u8],
        count: u32,
    ) -> io::Result<(u32, Option<u32>)> {
        let in_batch = token.unwrap_or(0);
        let mut out_batch = 0u32;
        let mut attr = BatchAttr {
            in_batch: if token.is_some() {
                &in_batch as *const u32 as u64
            } else {
                0
            },
            out_batch: &mut out_batch as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count,
            map_fd: self.fd as u32,
            ..BatchAttr::default()
        };
        match bpf(BPF_MAP_LOOKUP_AND_DELETE_BATCH, &mut attr) {
            Ok(()) => Ok((attr.count, Some(out_batch))),
            // The end of the map: `count` says how many this last call filled.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok((attr.count, None)),
            Err(e) => Err(e),
        }
    }

    fn lookup_and_delete(&mut self, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
        let mut attr = ElemAttr {
            map_fd: self.fd as u32,
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            ..ElemAttr::default()
        };
        found(bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr))
    }

    fn lookup(&self, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
        let mut attr = ElemAttr {
            map_fd: self.fd as u32,
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            ..ElemAttr::default()
        };
        found(bpf(BPF_MAP_LOOKUP_ELEM, &mut attr))
    }

    fn delete(&mut self, key: &[u8]) -> io::Result<bool> {
        let mut attr = ElemAttr {
            map_fd: self.fd as u32,
            key: key.as_ptr() as u64,
            ..ElemAttr::default()
        };
        found(bpf(BPF_MAP_DELETE_ELEM, &mut attr))
    }

    fn first_key(&self, key: &mut [u8]) -> io::Result<bool> {
        let mut attr = ElemAttr {
            map_fd: self.fd as u32,
            key: 0,
            value: key.as_mut_ptr() as u64, // next_key
            ..ElemAttr::default()
        };
        found(bpf(BPF_MAP_GET_NEXT_KEY, &mut attr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A per-CPU hash map in memory, with the kernel's buffer layout: batches
    /// walk "buckets" (here: keys in order), the token is the next position.
    struct FakeMap {
        entries: BTreeMap<[u8; 4], Vec<u8>>,
        value_len: usize,
        batch: bool,
        lookup_and_delete: bool,
        batch_calls: usize,
        elem_calls: usize,
    }

    impl MapCommands for FakeMap {
        fn lookup_and_delete_batch(
            &mut self,
            token: Option<u32>,
            keys: &mut [u8],
            values: &mut [u8],
            count: u32,
        ) -> io::Result<(u32, Option<u32>)> {
            if !self.batch {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            self.batch_calls += 1;
            let from = token.unwrap_or(0);
            // Keys are little-endian u32s: walk them in numeric order.
            let mut from_here: Vec<u32> = self
                .entries
                .keys()
                .map(|k| u32::from_le_bytes(*k))
                .filter(|k| *k >= from)
                .collect();
            from_here.sort_unstable();
            let taken: Vec<[u8; 4]> = from_here
                .iter()
                .take(count as usize)
                .map(|k| k.to_le_bytes())
                .collect();
            for (i, k) in taken.iter().enumerate() {
                let v = self.entries.remove(k).unwrap();
                keys[i * 4..i * 4 + 4].copy_from_slice(k);
                values[i * self.value_len..(i + 1) * self.value_len].copy_from_slice(&v);
            }
            let next = taken.last().map(|k| u32::from_le_bytes(*k) + 1);
            let more =
                next.is_some_and(|n| self.entries.keys().any(|k| u32::from_le_bytes(*k) >= n));
            Ok((taken.len() as u32, if more { next } else { None }))
        }
        fn lookup_and_delete(&mut self, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
            if !self.lookup_and_delete {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            self.elem_calls += 1;
            Ok(
                match self.entries.remove(<&[u8; 4]>::try_from(key).unwrap()) {
                    Some(v) => {
                        value.copy_from_slice(&v);
                        true
                    }
                    None => false,
                },
            )
        }
        fn lookup(&self, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
            Ok(match self.entries.get(<&[u8; 4]>::try_from(key).unwrap()) {
                Some(v) => {
                    value.copy_from_slice(v);
                    true
                }
                None => false,
            })
        }
        fn delete(&mut self, key: &[u8]) -> io::Result<bool> {
            self.elem_calls += 1;
            Ok(self
                .entries
                .remove(<&[u8; 4]>::try_from(key).unwrap())
                .is_some())
        }
        fn first_key(&self, key: &mut [u8]) -> io::Result<bool> {
            Ok(match self.entries.keys().next() {
                Some(k) => {
                    key.copy_from_slice(k);
                    true
                }
                None => false,
            })
        }
    }

    /// A 12-byte value: each per-CPU slot is padded to 16 bytes in the buffers.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Slot {
        a: u64,
        b: u32,
    }

    const CPUS: usize = 3;

    fn fake(n: u32, batch: bool, lookup_and_delete: bool) -> FakeMap {
        let stride = slot_stride::<Slot>();
        assert_eq!(stride, 16);
        let entries = (0..n)
            .map(|k| {
                let mut v = vec![0xAAu8; stride * CPUS]; // padding bytes are not read
                for cpu in 0..CPUS {
                    let slot = Slot {
                        a: u64::from(k) * 10 + cpu as u64,
                        b: k,
                    };
                    // SAFETY: Slot is plain data, 12 bytes into a 16-byte slot.
                    let bytes = unsafe {
                        std::slice::from_raw_parts((&slot as *const Slot).cast::<u8>(), 12)
                    };
                    v[cpu * stride..cpu * stride + 12].copy_from_slice(bytes);
                }
                (k.to_le_bytes(), v)
            })
            .collect();
        FakeMap {
            entries,
            value_len: stride * CPUS,
            batch,
            lookup_and_delete,
            batch_calls: 0,
            elem_calls: 0,
        }
    }

    fn check(out: &[(u32, Vec<Slot>)]) {
        for (k, slots) in out {
            assert_eq!(slots.len(), CPUS);
            for (cpu, s) in slots.iter().enumerate() {
                assert_eq!(
                    *s,
                    Slot {
                        a: u64::from(*k) * 10 + cpu as u64,
                        b: *k
                    }
                );
            }
        }
    }

    fn drain_all<C: MapCommands>(
        d: &mut BatchDrain<C, u32, Slot>,
        n: usize,
    ) -> Vec<(u32, Vec<Slot>)> {
        let mut all = Vec::new();
        loop {
            let got = d.take_many(n).unwrap();
            if got.is_empty() {
                return all;
            }
            assert!(got.len() <= n);
            all.extend(got.iter().map(|(k, slots)| (k, slots.to_vec())));
        }
    }

    #[test]
    fn batches_read_every_entry_once_with_each_cpu_slot_at_its_stride() {
        let mut d = BatchDrain::<_, u32, Slot>::new(fake(10_000, true, true), CPUS, 4096, "T");
        let all = drain_all(&mut d, 4096);
        assert_eq!(all.len(), 10_000);
        let keys: std::collections::BTreeSet<u32> = all.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys.len(), 10_000);
        check(&all);
        assert!(d.commands.entries.is_empty());
        assert_eq!(
            d.commands.batch_calls, 3,
            "4096 + 4096 + 1808, no call after the end"
        );
        assert_eq!(d.commands.elem_calls, 0);
    }

    #[test]
    fn single_takes_and_peeks_decode_the_same_slots() {
        let mut d = BatchDrain::<_, u32, Slot>::new(fake(5, true, true), CPUS, 4096, "T");
        let peeked = d.peek(&3).unwrap().unwrap();
        check(&[(3, peeked)]);
        let taken = d.take(&3).unwrap().unwrap();
        check(&[(3, taken)]);
        assert_eq!(d.take(&3).unwrap(), None, "taken means removed");
        assert_eq!(d.peek(&3).unwrap(), None);
        assert_eq!(drain_all(&mut d, 2).len(), 4);
    }

    #[test]
    fn kernels_without_batch_or_lookup_and_delete_give_the_same_entries() {
        for (batch, lad) in [(false, true), (false, false), (true, false)] {
            let mut d = BatchDrain::<_, u32, Slot>::new(fake(300, batch, lad), CPUS, 128, "T");
            assert_eq!(d.take(&7).unwrap().map(|s| s.len()), Some(CPUS));
            let all = drain_all(&mut d, 128);
            assert_eq!(all.len(), 299, "batch={batch} lookup_and_delete={lad}");
            check(&all);
            assert!(d.commands.entries.is_empty());
        }
    }
}
