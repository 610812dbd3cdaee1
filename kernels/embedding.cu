// Row gather (embedding lookup, beam reordering) and its backward, the scatter-add.
//
// Why it is built this way: a gather is a pure copy, so it works on 32-bit or 16-bit
// words whatever the dtype (f32 and i32 share one kernel). One block row per id keeps
// reads and writes coalesced along the row. Out-of-range ids are never read (the row is
// zeros, or skipped in backward) and are recorded in the device error record
// (common.cuh, fb_report) that the host checks at its next device-to-host copy: the
// contract says bad ids are an error, a silent out-of-bounds read would be garbage, and
// a 4-byte readback after every lookup would be a device sync per embedding call. The backward scatters with fp32 atomicAdd into an
// fp32 buffer (repeated ids collide; atomics on f16 would lose precision), which the host
// casts to f16 when the gradient is f16. Positions whose id is `skip` (padding_idx; -1 for
// none) add nothing, so the pad row needs no masking or table copies around the lookup.
#include "common.cuh"

#define FB_GATHER(S, W)                                                                       \
    extern "C" __global__ void fb_index_select_##S(W* out, const W* table, const int* ids,    \
                                                   i64 n_ids, i64 n_rows, i64 cols,           \
                                                   int* err) {                                \
        for (i64 k = blockIdx.x; k < n_ids; k += gridDim.x) {                                 \
            int id = ids[k];                                                                  \
            bool ok = id >= 0 && (i64)id < n_rows;                                            \
            if (!ok && threadIdx.x == 0) fb_report(err, FB_ERR_INDEX_SELECT, id, n_rows, 0);  \
            for (i64 c = threadIdx.x; c < cols; c += blockDim.x)                              \
                out[k * cols + c] = ok ? table[(i64)id * cols + c] : (W)0;                    \
        }                                                                                     \
    }
FB_GATHER(b32, unsigned int)
FB_GATHER(b16, unsigned short)

#define FB_SCATTER(S, T)                                                                      \
    extern "C" __global__ void fb_index_add_##S(float* out, const T* dy, const int* ids,      \
                                                i64 n_ids, i64 n_rows, i64 cols, i64 skip,    \
                                                int* err) {                                   \
        for (i64 k = blockIdx.x; k < n_ids; k += gridDim.x) {                                 \
            int id = ids[k];                                                                  \
            if (id < 0 || (i64)id >= n_rows) {                                                \
                if (threadIdx.x == 0) fb_report(err, FB_ERR_INDEX_ADD, id, n_rows, 0);        \
                continue;                                                                     \
            }                                                                                 \
            if ((i64)id == skip) continue;                                                    \
            for (i64 c = threadIdx.x; c < cols; c += blockDim.x)                              \
                atomicAdd(out + (i64)id * cols + c, fb_ld(dy, k * cols + c));                 \
        }                                                                                     \
    }
FB_BOTH(FB_SCATTER)
