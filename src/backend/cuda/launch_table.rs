//! Launch tables: one kernel parameter, passed by value, that lists up to `MAX` tensors as
//! columns (struct of arrays, laid out exactly as the kernel's C struct), each tensor's
//! chunks numbered by a prefix sum (`chunk_start`). The multi-tensor AdamW
//! (adamw_multi.rs) and Adafactor (adafactor.rs) steps declare theirs with
//! [`device_table!`] and fill them with [`fill`].

use crate::error::{Error, Result};

/// Blocks per launch at most (256 threads each): ~8 per SM on an H100.
pub(super) const MAX_GRID: usize = 1024;

/// A launch table's host mirror.
pub(super) trait LaunchTable: Copy {
    /// Tensors per table: the kernel's.
    const MAX: usize;
    /// All zero: no tensor.
    fn zeroed() -> Self;
    /// The first chunk of each tensor, then the total (`MAX + 1` entries).
    fn chunk_start(&mut self) -> &mut [i32];
    fn set_count(&mut self, count: i32);
}

/// A `#[repr(C)]` launch table `$name` of `$max` tensors: the per-tensor columns in order,
/// then `chunk_start` (`$max + 1` entries), `count`, and the table-wide `i32` words.
macro_rules! device_table {
    ($(#[$m:meta])* $name:ident[$max:expr] { $($col:ident: $t:ty),* $(,)? }
        then { $($word:ident),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct $name {
            $($col: [$t; $max],)*
            chunk_start: [i32; $max + 1],
            count: i32,
            $($word: i32,)*
        }

        // SAFETY: a #[repr(C)] struct of plain integers and floats, the kernel's layout
        // (its size is asserted on both sides).
        unsafe impl cudarc::driver::DeviceRepr for $name {}

        impl super::launch_table::LaunchTable for $name {
            const MAX: usize = $max;
            fn zeroed() -> Self {
                $name {
                    $($col: [<$t>::default(); $max],)*
                    chunk_start: [0; $max + 1],
                    count: 0,
                    $($word: 0,)*
                }
            }
            fn chunk_start(&mut self) -> &mut [i32] {
                &mut self.chunk_start
            }
            fn set_count(&mut self, count: i32) {
                self.count = count;
            }
        }
    };
}
pub(super) use device_table;

/// One filled table, with each tensor's chunk count and their total.
pub(super) struct Filled<T> {
    pub tab: T,
    pub per: Vec<usize>,
    pub chunks: usize,
}

/// `x` as a table's `i32`, or the error naming `op`.
pub(super) fn i32_of(x: usize, op: &str) -> Result<i32> {
    i32::try_from(x).map_err(|_| Error::msg(format!("{op}: too many chunks in one launch")))
}

/// Tables of up to `T::MAX` of `items`, in order: `put` writes item `d` into slot `k` and
/// returns its chunk count; the chunk prefix sums and the count are set here.
pub(super) fn fill<T: LaunchTable, D>(
    items: &[D],
    op: &str,
    mut put: impl FnMut(&mut T, usize, &D) -> Result<usize>,
) -> Result<Vec<Filled<T>>> {
    let mut out = Vec::new();
    for group in items.chunks(T::MAX) {
        let mut tab = T::zeroed();
        let mut per = Vec::with_capacity(group.len());
        let mut chunks = 0usize;
        for (k, d) in group.iter().enumerate() {
            tab.chunk_start()[k] = i32_of(chunks, op)?;
            let ch = put(&mut tab, k, d)?;
            per.push(ch);
            chunks += ch;
        }
        tab.chunk_start()[group.len()] = i32_of(chunks, op)?;
        tab.set_count(group.len() as i32);
        out.push(Filled { tab, per, chunks });
    }
    Ok(out)
}

/// Test helper: the table's size is the first word of each kernel's signature (built
/// with nvcc; skipped without).
#[cfg(test)]
pub(super) fn assert_table_size<T>(kernels: &[&str]) {
    let bytes = format!("bytes{}", std::mem::size_of::<T>());
    for k in kernels {
        match super::context::kernel_signature(k) {
            Some(sig) => assert_eq!(sig.split(' ').next(), Some(bytes.as_str()), "{k}: {sig}"),
            None => eprintln!("SKIP {k}: no signature table (built without nvcc)"),
        }
    }
}
