// Hamming search on top of the dispatched scan kernels: one-to-many, many-to-many tiled for cache, top-k
// pruned against the current k-th distance, radius search; threads over queries (parallel.h).
#include <algorithm>
#include <limits>
#include <vector>

#include "hamming.h"
#include "hamming_kernels.h"
#include "parallel.h"

namespace imgsim {
namespace {

// A db tile of this many bytes stays in L1d (32-48 KiB on current x86) while a block of queries scans
// it, so a batch reads the db from memory once per kQueryBlock queries instead of once per query.
constexpr size_t kTileBytes = 16 * 1024;
constexpr size_t kQueryBlock = 32;
// Up to this k a binary heap per query is kept; above it, computing every distance and selecting with a
// counting pass over the (few, <= 64 * words + 1) distance values is cheaper than heap updates.
constexpr size_t kHeapMaxK = 256;
// Below this many code comparisons, starting threads costs more than it saves.
constexpr size_t kMinParallelWork = size_t(1) << 16;

size_t tile_rows(size_t words) { return std::max<size_t>(64, kTileBytes / (8 * words)); }

size_t resolve_threads(int threads, size_t items, size_t work) {
    return work < kMinParallelWork ? 1 : thread_count(threads, items);
}

struct Hit {
    uint32_t d;
    int64_t i;
};
inline bool hit_less(const Hit& a, const Hit& b) { return a.d < b.d || (a.d == b.d && a.i < b.i); }

// Heap path: per query a max-heap of the best kk (distance, index) seen so far. Rows arrive in increasing
// index, so a row can only enter when its distance is strictly below the heap top: the kernel filters
// with threshold top - 1 in SIMD registers and nearly all rows never reach scalar code.
void topk_heap(const HammingKernels& K, const uint64_t* q, size_t q0, size_t q1, const uint64_t* db, size_t n,
               size_t words, size_t kk, int64_t* ids, int32_t* dists) {
    const size_t T = std::min(tile_rows(words), n);
    std::vector<uint32_t> cidx(T), cdist(T);
    std::vector<Hit> heaps(kQueryBlock * kk);
    size_t sizes[kQueryBlock];
    for (size_t b0 = q0; b0 < q1; b0 += kQueryBlock) {
        const size_t nb = std::min(kQueryBlock, q1 - b0);
        std::fill(sizes, sizes + nb, size_t(0));
        for (size_t j0 = 0; j0 < n; j0 += T) {
            const size_t len = std::min(T, n - j0);
            for (size_t qi = 0; qi < nb; ++qi) {
                Hit* h = &heaps[qi * kk];
                size_t& sz = sizes[qi];
                uint32_t thresh = std::numeric_limits<uint32_t>::max();
                if (sz == kk) {
                    if (h[0].d == 0) continue;  // kk exact matches with smaller indices: nothing can enter
                    thresh = h[0].d - 1;
                }
                const size_t c = K.filter_le(q + (b0 + qi) * words, db + j0 * words, len, words, thresh,
                                             cidx.data(), cdist.data());
                for (size_t t = 0; t < c; ++t) {
                    const Hit x{cdist[t], static_cast<int64_t>(j0 + cidx[t])};
                    if (sz < kk) {
                        h[sz++] = x;
                        std::push_heap(h, h + sz, hit_less);
                    } else if (x.d < h[0].d) {
                        std::pop_heap(h, h + kk, hit_less);
                        h[kk - 1] = x;
                        std::push_heap(h, h + kk, hit_less);
                    }
                }
            }
        }
        for (size_t qi = 0; qi < nb; ++qi) {
            Hit* h = &heaps[qi * kk];
            std::sort_heap(h, h + sizes[qi], hit_less);
            const size_t row = (b0 + qi) * kk;
            for (size_t j = 0; j < kk; ++j) {
                ids[row + j] = h[j].i;
                dists[row + j] = static_cast<int32_t>(h[j].d);
            }
        }
    }
}

// Large-k path: all distances, a histogram, and a stable counting placement. The cut-off distance D is
// the smallest with count(d <= D) >= kk; rows at D are taken in index order until kk are placed.
void topk_counting(const HammingKernels& K, const uint64_t* q, size_t q0, size_t q1, const uint64_t* db, size_t n,
                   size_t words, size_t kk, int64_t* ids, int32_t* dists) {
    std::vector<uint32_t> d(n);
    std::vector<size_t> start(64 * words + 1);
    for (size_t qi = q0; qi < q1; ++qi) {
        K.dist_u32(q + qi * words, db, n, words, d.data());
        std::fill(start.begin(), start.end(), size_t(0));
        for (size_t i = 0; i < n; ++i) ++start[d[i]];
        size_t below = 0;
        uint32_t cut = 0;
        while (below + start[cut] < kk) below += start[cut++];
        size_t acc = 0;
        for (uint32_t v = 0; v <= cut; ++v) {
            const size_t c = start[v];
            start[v] = acc;
            acc += c;
        }
        size_t left_at_cut = kk - below;
        int64_t* oi = ids + qi * kk;
        int32_t* od = dists + qi * kk;
        for (size_t i = 0; i < n; ++i) {
            const uint32_t v = d[i];
            if (v > cut || (v == cut && left_at_cut == 0)) continue;
            if (v == cut) --left_at_cut;
            const size_t p = start[v]++;
            oi[p] = static_cast<int64_t>(i);
            od[p] = static_cast<int32_t>(v);
        }
    }
}

struct QueryHits {
    std::vector<int64_t> ids;
    std::vector<int32_t> d;
};

// Sort one query's hits (already in increasing index) by distance, keeping index order among ties.
void sort_hits(QueryHits& h, uint32_t r) {
    const size_t m = h.ids.size();
    if (m < 2) return;
    if (static_cast<size_t>(r) + 1 <= 4 * m) {  // counting sort: O(m + r), stable
        std::vector<size_t> start(static_cast<size_t>(r) + 2, 0);
        for (size_t j = 0; j < m; ++j) ++start[static_cast<size_t>(h.d[j]) + 1];
        for (size_t v = 1; v < start.size(); ++v) start[v] += start[v - 1];
        QueryHits out;
        out.ids.resize(m);
        out.d.resize(m);
        for (size_t j = 0; j < m; ++j) {
            const size_t p = start[static_cast<size_t>(h.d[j])]++;
            out.ids[p] = h.ids[j];
            out.d[p] = h.d[j];
        }
        h = std::move(out);
    } else {
        std::vector<Hit> tmp(m);
        for (size_t j = 0; j < m; ++j) tmp[j] = Hit{static_cast<uint32_t>(h.d[j]), h.ids[j]};
        std::sort(tmp.begin(), tmp.end(), hit_less);  // keys are unique (distinct indices)
        for (size_t j = 0; j < m; ++j) {
            h.ids[j] = tmp[j].i;
            h.d[j] = static_cast<int32_t>(tmp[j].d);
        }
    }
}

void radius_range(const HammingKernels& K, const uint64_t* q, size_t q0, size_t q1, const uint64_t* db, size_t n,
                  size_t words, uint32_t r, QueryHits* hits) {
    const size_t T = std::min(tile_rows(words), n);
    std::vector<uint32_t> cidx(T), cdist(T);
    for (size_t b0 = q0; b0 < q1; b0 += kQueryBlock) {
        const size_t nb = std::min(kQueryBlock, q1 - b0);
        for (size_t j0 = 0; j0 < n; j0 += T) {
            const size_t len = std::min(T, n - j0);
            for (size_t qi = b0; qi < b0 + nb; ++qi) {
                const size_t c = K.filter_le(q + qi * words, db + j0 * words, len, words, r, cidx.data(),
                                             cdist.data());
                QueryHits& h = hits[qi];
                for (size_t t = 0; t < c; ++t) {
                    h.ids.push_back(static_cast<int64_t>(j0 + cidx[t]));
                    h.d.push_back(static_cast<int32_t>(cdist[t]));
                }
            }
        }
        for (size_t qi = b0; qi < b0 + nb; ++qi) sort_hits(hits[qi], r);
    }
}

}  // namespace

void hamming_one_to_many(const uint64_t* q, const uint64_t* db, size_t n, size_t words, uint32_t* d) {
    if (n == 0) return;
    active_kernels().dist_u32(q, db, n, words, d);
}

void hamming_many_to_many(const uint64_t* a, size_t n_a, const uint64_t* b, size_t n_b, size_t words,
                          uint16_t* out, int threads) {
    if (n_a == 0 || n_b == 0) return;
    const HammingKernels& K = active_kernels();
    const size_t T = tile_rows(words);
    // Query rows i in [i0, i1) against db columns [j0, j1): each db tile is reused by a block of rows.
    auto block = [&](size_t i0, size_t i1, size_t j0, size_t j1) {
        for (size_t ib = i0; ib < i1; ib += kQueryBlock) {
            const size_t ie = std::min(i1, ib + kQueryBlock);
            for (size_t jt = j0; jt < j1; jt += T) {
                const size_t len = std::min(T, j1 - jt);
                for (size_t i = ib; i < ie; ++i) K.dist_u16(a + i * words, b + jt * words, len, words, out + i * n_b + jt);
            }
        }
    };
    const size_t work = n_a * n_b * words;
    const size_t t = resolve_threads(threads, std::max(n_a, n_b), work);
    if (n_a >= t) {
        parallel_for(n_a, t, kQueryBlock, [&](size_t i0, size_t i1, size_t) { block(i0, i1, 0, n_b); });
    } else {  // few queries, many columns: split the db instead
        parallel_for(n_b, t, T, [&](size_t j0, size_t j1, size_t) { block(0, n_a, j0, j1); });
    }
}

void hamming_topk(const uint64_t* q, size_t n_q, const uint64_t* db, size_t n, size_t words, size_t k,
                  int64_t* ids, int32_t* dists, int threads) {
    const size_t kk = std::min(k, n);
    if (n_q == 0 || kk == 0) return;
    const HammingKernels& K = active_kernels();
    const size_t t = resolve_threads(threads, n_q, n_q * n * words);
    parallel_for(n_q, t, kQueryBlock, [&](size_t q0, size_t q1, size_t) {
        if (kk <= kHeapMaxK) {
            topk_heap(K, q, q0, q1, db, n, words, kk, ids, dists);
        } else {
            topk_counting(K, q, q0, q1, db, n, words, kk, ids, dists);
        }
    });
}

RangeResult hamming_radius(const uint64_t* q, size_t n_q, const uint64_t* db, size_t n, size_t words, uint32_t r,
                           int threads) {
    RangeResult res;
    res.lims.assign(n_q + 1, 0);
    if (n_q == 0 || n == 0) return res;
    const size_t max_d = 64 * words;
    if (r > max_d) r = static_cast<uint32_t>(max_d);  // every row qualifies; keeps counting sorts small
    const HammingKernels& K = active_kernels();
    std::vector<QueryHits> hits(n_q);
    const size_t t = resolve_threads(threads, n_q, n_q * n * words);
    parallel_for(n_q, t, kQueryBlock,
                 [&](size_t q0, size_t q1, size_t) { radius_range(K, q, q0, q1, db, n, words, r, hits.data()); });
    for (size_t i = 0; i < n_q; ++i) res.lims[i + 1] = res.lims[i] + static_cast<int64_t>(hits[i].ids.size());
    const size_t total = static_cast<size_t>(res.lims[n_q]);
    res.ids.resize(total);
    res.dists.resize(total);
    for (size_t i = 0; i < n_q; ++i) {
        std::copy(hits[i].ids.begin(), hits[i].ids.end(), res.ids.begin() + res.lims[i]);
        std::copy(hits[i].d.begin(), hits[i].d.end(), res.dists.begin() + res.lims[i]);
        std::vector<int64_t>().swap(hits[i].ids);  // free as we go: peak memory stays near one copy
        std::vector<int32_t>().swap(hits[i].d);
    }
    return res;
}

}  // namespace imgsim
