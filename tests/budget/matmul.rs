//! The CPU's matmul takes a scratch for some shapes of `x · Wᵀ` (`backend::cpu::
//! scratch_len`): W copied row-major where gemm is faster on the copy, or the transposed
//! product of the swapped route for small batches. The scratch is a tracked buffer, alive
//! until the result exists, and the meta device's CPU target plans the same bytes at the
//! same moment.

use fusebox::backend::cpu::scratch_len;
use fusebox::backend::{tracker, BackendStorage, CpuStorage, MatmulSpec, MetaStorage};
use fusebox::shape::{DType, Device, Target};

use super::lock;

#[test]
fn matmul_scratch_is_tracked_and_planned_to_the_byte() {
    let _l = lock();
    // (rows, out, in, scratch elements): from 64 rows a narrow output and a long reduction
    // copy W; a wide output with 9 to 256 rows takes the swapped route's transposed
    // product; with more rows, or few, there is none.
    for (rows, out_f, in_f, scratch) in [
        (70, 21, 33, 21 * 33),
        (64, 16, 200, 16 * 200),
        (70, 2000, 33, 70 * 2000),
        (12, 300, 40, 12 * 300),
        (300, 2000, 33, 0),
        (4, 2000, 33, 0),
    ] {
        let spec = MatmulSpec::linear(rows, out_f, in_f);
        assert_eq!(scratch_len(&spec), scratch, "{spec:?}");
        let peak = |dev: Device, run: &dyn Fn()| {
            let held = tracker::live_bytes(dev);
            tracker::reset_peak(dev);
            run();
            tracker::peak_bytes(dev) - held
        };
        let cpu = peak(Device::Cpu, &|| {
            let x = CpuStorage::from_f32(vec![0.5; rows * in_f]);
            let w = CpuStorage::from_f32(vec![0.25; out_f * in_f]);
            let before = tracker::live_bytes(Device::Cpu);
            let y = x.matmul(&w, &spec).expect("cpu matmul");
            assert_eq!(tracker::live_bytes(Device::Cpu) - before, rows * out_f * 4);
            drop(y);
        });
        let meta = peak(Device::Meta(Target::Cpu), &|| {
            let x = MetaStorage::new(rows * in_f, DType::F32, Target::Cpu);
            let w = MetaStorage::new(out_f * in_f, DType::F32, Target::Cpu);
            drop(x.matmul(&w, &spec).expect("meta matmul"));
        });
        assert_eq!(meta, cpu, "peak of {spec:?}: meta vs CPU");
        let operands_and_out = (rows * in_f + out_f * in_f + rows * out_f) * 4;
        assert_eq!(cpu, operands_and_out + scratch * 4, "{spec:?}");
    }
}
