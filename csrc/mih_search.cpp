// MIH queries: radius and kNN through the tables (paper, Algorithms 1-2), each query falling back to the
// batched linear SIMD scan when the cost model says probing would cost more.
#include "mih_internal.h"

namespace imgsim {

// Linear scans (the fallback, and the rows added since the last build).

// The scan runs as hamming_radius / hamming_topk do (hamming_search.cpp): rows in tiles that stay in
// L1d, each tile filtered in SIMD registers by a block of queries before the next tile, so a batch reads
// the codes from memory once per block of queries, and rows beyond the threshold never reach scalar
// code. Only rows that pass are checked against the removed-row bitmap and mapped to ids.
namespace {

// thresh(j, t): false to skip query j for this tile, else its current threshold t (inclusive).
// emit(j, row, d) for every row of [begins[j], end) with distance <= the threshold, in row order.
template <class Thresh, class Emit>
void scan_tiles(const uint64_t* codes, size_t words, size_t end, const uint64_t* const* qs, const size_t* begins,
                size_t nq, uint32_t* idx, uint32_t* dist, Thresh&& thresh, Emit&& emit) {
    const HammingKernels& K = active_kernels();
    const size_t T = scan_tile_rows(words);
    for (size_t j0 = 0; j0 < nq; j0 += kScanQueryBlock) {
        const size_t j1 = std::min(nq, j0 + kScanQueryBlock);
        size_t lo = end;
        for (size_t j = j0; j < j1; ++j) lo = std::min(lo, begins[j]);
        for (size_t t0 = lo; t0 < end; t0 += T) {
            const size_t t1 = std::min(end, t0 + T);
            for (size_t j = j0; j < j1; ++j) {
                const size_t b = std::max(t0, begins[j]);
                uint32_t th;
                if (b >= t1 || !thresh(j, th)) continue;
                const size_t c = K.filter_le(qs[j], codes + b * words, t1 - b, words, th, idx, dist);
                for (size_t u = 0; u < c; ++u) emit(j, b + idx[u], dist[u]);
            }
        }
    }
}
}  // namespace

void MihIndex::scan_radius_batch(const uint64_t* const* qs, const size_t* begins, size_t nq, uint32_t r, Scratch& s,
                                 std::vector<std::pair<int32_t, int64_t>>* const* outs) const {
    const uint64_t* dead = dead_.data();
    scan_tiles(
        codes_.data(), words_, row_ids_.size(), qs, begins, nq, s.idx.data(), s.dist.data(),
        [&](size_t, uint32_t& t) {
            t = r;
            return true;
        },
        [&](size_t j, size_t row, uint32_t d) {
            if ((dead[row / 64] >> (row % 64)) & 1) return;
            outs[j]->emplace_back(static_cast<int32_t>(d), row_ids_[row]);
        });
}

static MIH_INLINE void heap_offer(std::vector<std::pair<int32_t, int64_t>>& heap, size_t kk, int32_t d, int64_t id) {
    std::pair<int32_t, int64_t> e(d, id);
    if (heap.size() < kk) {
        heap.push_back(e);
        std::push_heap(heap.begin(), heap.end());
    } else if (e < heap.front()) {
        std::pop_heap(heap.begin(), heap.end());
        heap.back() = e;
        std::push_heap(heap.begin(), heap.end());
    }
}

void MihIndex::scan_knn_batch(const uint64_t* const* qs, size_t nq, size_t kk, size_t begin, Scratch& s,
                              std::vector<std::pair<int32_t, int64_t>>* const* heaps) const {
    if (kk == 0) return;
    const uint64_t* dead = dead_.data();
    std::vector<size_t> begins(nq, begin);
    scan_tiles(
        codes_.data(), words_, row_ids_.size(), qs, begins.data(), nq, s.idx.data(), s.dist.data(),
        [&](size_t j, uint32_t& t) {
            // A full heap admits a row only below its top (distance, id); ids need not follow rows, so
            // ties at the top distance pass the filter and heap_offer decides.
            const auto& h = *heaps[j];
            t = h.size() < kk ? ~uint32_t{0} : static_cast<uint32_t>(h.front().first);
            return true;
        },
        [&](size_t j, size_t row, uint32_t d) {
            if ((dead[row / 64] >> (row % 64)) & 1) return;
            heap_offer(*heaps[j], kk, static_cast<int32_t>(d), row_ids_[row]);
        });
}

void MihIndex::knn_scan_deferred(const uint64_t* q, const std::vector<size_t>& qi, size_t kk, int64_t* ids,
                                 int32_t* dists, int threads, std::vector<Scratch>& scratch) const {
    if (qi.empty() || kk == 0) return;
    int nt = std::min<int>(threads, static_cast<int>((qi.size() + kScanQueryBlock - 1) / kScanQueryBlock));
    parallel_for(qi.size(), std::max(nt, 1), kScanQueryBlock, [&](size_t b, size_t e, size_t tid) {
        Scratch& s = scratch[tid];
        const size_t n = e - b;
        if (s.heaps.size() < n) s.heaps.resize(n);
        std::vector<const uint64_t*> qs(n);
        std::vector<std::vector<std::pair<int32_t, int64_t>>*> hp(n);
        for (size_t j = 0; j < n; ++j) {
            qs[j] = q + qi[b + j] * words_;
            s.heaps[j].clear();
            hp[j] = &s.heaps[j];
        }
        scan_knn_batch(qs.data(), n, kk, 0, s, hp.data());
        for (size_t j = 0; j < n; ++j) {
            auto& h = s.heaps[j];
            std::sort_heap(h.begin(), h.end());
            int64_t* oi = ids + qi[b + j] * kk;
            int32_t* od = dists + qi[b + j] * kk;
            for (size_t u = 0; u < kk; ++u) {
                oi[u] = h[u].second;
                od[u] = h[u].first;
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------------
// Radius search for one query. Rows below min_row are ignored (the self-join asks each row only for
// later rows). Each table is probed at every substring distance <= its radius; a candidate is kept
// only from the first table (probe order) that reaches it, so no visited set is needed.
MIH_CLONES bool MihIndex::radius_one(const uint64_t* q, uint32_t r, size_t min_row, size_t batch, Scratch& s,
                                     Counters& c, std::vector<std::pair<int32_t, int64_t>>& out) const {
    const size_t rows = row_ids_.size();
    const size_t W = words_;
    ++c.queries;
    double budget = 0;
    if (path_ == MihPath::scan || tables_.empty() || (path_ == MihPath::automatic && radius_prefers_scan(r, rows - std::min(rows, min_row), batch, &budget))) {
        ++c.scanned;
        return true;
    }
    const bool may_abort = path_ == MihPath::automatic;
    // The estimate assumes uniform codes; on clustered ones most probes may hit dense buckets. When
    // most earlier queries of this batch (on this thread) gave up, scan at once rather than paying the
    // probe budget first (measured: clustered 10M, r = 10); every 16th query still probes.
    if (may_abort && c.radius_tried >= 8 && c.radius_aborted * 4 > c.radius_tried * 3 && c.queries % 16 != 0) {
        ++c.scanned;
        return true;
    }
    ++c.radius_tried;
    {
        // Rows added since the last build are not in the tables.
        const size_t b = std::max(min_row, built_rows_);
        auto* o = &out;
        if (b < rows) scan_radius_batch(&q, &b, 1, r, s, &o);
    }
    const size_t m = tables_.size();
    int rad[256];
    {
        std::vector<int> rv;
        radius_rule(r, m, rv);
        for (size_t t = 0; t < m; ++t) rad[t] = std::min<int>(rv[t], static_cast<int>(tables_[order_[t]].len));
    }
    uint64_t probes = 0, cands = 0;
    uint64_t x[4];
    for (size_t t = 0; t < m; ++t) {
        if (rad[t] < 0) continue;
        const Table& T = tables_[order_[t]];
        const uint32_t qk = T.extract(q);
        auto visit = [&](uint32_t row) __attribute__((always_inline)) {
            if (row < min_row) return;
            ++cands;
            int D = code_distance(q, codes_.data() + static_cast<size_t>(row) * W, W, x);
            if (D > static_cast<int>(r)) return;
            if ((dead_[row / 64] >> (row % 64)) & 1) return;
            bool earlier = false;
            for (size_t u = 0; u < t && !earlier; ++u)
                earlier = rad[u] >= 0 && popcount64(tables_[order_[u]].extract(x)) <= rad[u];
            if (!earlier) out.emplace_back(D, row_ids_[row]);
        };
        auto too_dear = [&]() __attribute__((always_inline)) {
            return may_abort && probes * kProbeCost + cands * kCandidateCost > budget;
        };
        for (int d = 0; d <= rad[t]; ++d) {
            if (probe_shell(T, qk, static_cast<unsigned>(d), probes, visit, too_dear)) {
                // Probing turned out dearer than the scan (dense clusters): answer by scanning.
                c.probes += probes;
                c.candidates += cands;
                ++c.scanned;
                ++c.radius_aborted;
                out.clear();
                return true;
            }
        }
    }
    c.probes += probes;
    c.candidates += cands;
    return false;
}

// kNN for one query (paper, Algorithm 2): probe substring distance r' = 0, 1, ... in every table; after
// table t at distance r', every code within m r' + t has been seen, so stop once the k-th best is
// within that bound. A candidate counts only at the first (r', table) that reaches it.
MIH_CLONES bool MihIndex::knn_one(const uint64_t* q, size_t kk, size_t batch, Scratch& s, Counters& c,
                                  int64_t* ids, int32_t* dists) const {
    const size_t rows = row_ids_.size();
    const size_t W = words_;
    const size_t m = tables_.size();
    auto& heap = s.heap;
    heap.clear();
    ++c.queries;
    if (kk == 0) return false;
    const double budget = scan_cost(rows, batch);
    // kNN has no radius to estimate cost from up front; when most earlier queries of this batch (on
    // this thread) had to give up on probing, scan directly instead of paying the probe budget again.
    bool scan = path_ == MihPath::scan || tables_.empty() ||
                (path_ == MihPath::automatic &&
                 (static_cast<double>(m) * kProbeCost > budget ||
                  (c.knn_tried >= 8 && c.knn_aborted * 4 > c.knn_tried * 3 && c.queries % 16 != 0)));
    bool tried = !scan;
    if (!scan) {
        if (built_rows_ < rows) {  // rows added since the last build are not in the tables
            auto* h = &heap;
            scan_knn_batch(&q, 1, kk, built_rows_, s, &h);
        }
        uint64_t probes = 0, cands = 0;
        uint64_t x[4];
        uint32_t qk[256];
        for (size_t t = 0; t < m; ++t) qk[t] = tables_[order_[t]].extract(q);
        bool done = false;
        for (int rp = 0; !done && !scan; ++rp) {
            for (size_t t = 0; t < m && !done && !scan; ++t) {
                const Table& T = tables_[order_[t]];
                if (rp <= static_cast<int>(T.len)) {
                    auto visit = [&](uint32_t row) __attribute__((always_inline)) {
                        ++cands;
                        int D = code_distance(q, codes_.data() + static_cast<size_t>(row) * W, W, x);
                        if (heap.size() == kk && D > heap.front().first) return;
                        if ((dead_[row / 64] >> (row % 64)) & 1) return;
                        bool earlier = false;
                        for (size_t u = 0; u < m && !earlier; ++u) {
                            if (u == t) continue;
                            int du = popcount64(tables_[order_[u]].extract(x));
                            earlier = u < t ? du <= rp : du < rp;
                        }
                        if (!earlier) heap_offer(heap, kk, D, row_ids_[row]);
                    };
                    auto too_dear = [&]() __attribute__((always_inline)) {
                        return path_ == MihPath::automatic && probes * kProbeCost + cands * kCandidateCost > budget;
                    };
                    // Dearer than the scan: restart as a scan below.
                    scan = probe_shell(T, qk[t], static_cast<unsigned>(rp), probes, visit, too_dear);
                }
                if (scan) break;
                // Not yet seen => d_u >= r'+1 for u <= t and >= r' for u > t => distance >= m r' + t + 1.
                if (heap.size() == kk && heap.front().first <= static_cast<int>(m) * rp + static_cast<int>(t))
                    done = true;
                // Table t fully enumerated: every code has been seen.
                if (rp >= static_cast<int>(T.len)) done = true;
            }
        }
        c.probes += probes;
        c.candidates += cands;
    }
    if (tried) {
        ++c.knn_tried;  // every 16th query keeps probing, so a batch can switch back
        if (scan) ++c.knn_aborted;
    }
    if (scan) {
        ++c.scanned;
        return true;
    }
    std::sort_heap(heap.begin(), heap.end());
    for (size_t j = 0; j < kk; ++j) {
        ids[j] = heap[j].second;
        dists[j] = heap[j].first;
    }
    return false;
}

std::vector<size_t> mih_detail::merge_deferred(std::vector<std::vector<size_t>>& per_thread) {
    std::vector<size_t> all;
    for (auto& v : per_thread) all.insert(all.end(), v.begin(), v.end());
    std::sort(all.begin(), all.end());
    return all;
}

void MihIndex::radius_scan_deferred(const uint64_t* const* qs, const size_t* begins,
                                    std::vector<std::pair<int32_t, int64_t>>* const* outs, size_t n, uint32_t r,
                                    int threads, std::vector<Scratch>& scratch) const {
    if (n == 0) return;
    int nt = std::min<int>(threads, static_cast<int>((n + kScanQueryBlock - 1) / kScanQueryBlock));
    parallel_for(n, std::max(nt, 1), kScanQueryBlock, [&](size_t b, size_t e, size_t tid) {
        scan_radius_batch(qs + b, begins + b, e - b, r, scratch[tid], outs + b);
    });
}

void MihIndex::record(const char* kind, const Counters& c) const {
    std::lock_guard<std::mutex> lk(stats_mu_);
    last_.last_kind = kind;
    last_.last_queries = c.queries;
    last_.last_scanned = c.scanned;
    last_.last_probes = c.probes;
    last_.last_candidates = c.candidates;
}

size_t MihIndex::knn(const uint64_t* q, size_t n_q, size_t k, std::vector<int64_t>& ids, std::vector<int32_t>& dists,
                     int threads) {
    ensure_built(false);
    std::shared_lock<std::shared_mutex> lk(mu_);
    size_t kk = std::min(k, row_ids_.size() - n_dead_);
    ids.assign(n_q * kk, -1);
    dists.assign(n_q * kk, -1);
    const size_t nt = thread_count(threads, n_q);
    std::vector<Scratch> scratch(nt);
    std::vector<Counters> counters(nt);
    std::vector<std::vector<size_t>> deferred(nt);
    parallel_for(n_q, nt, 16, [&](size_t b, size_t e, size_t tid) {
        for (size_t i = b; i < e; ++i)
            if (knn_one(q + i * words_, kk, n_q, scratch[tid], counters[tid], ids.data() + i * kk, dists.data() + i * kk))
                deferred[tid].push_back(i);
    });
    knn_scan_deferred(q, merge_deferred(deferred), kk, ids.data(), dists.data(), nt, scratch);
    Counters total;
    for (auto& c : counters) total.add(c);
    record("knn", total);
    return kk;
}

RangeResult MihIndex::radius(const uint64_t* q, size_t n_q, uint32_t r, int threads) {
    ensure_built(false);
    std::shared_lock<std::shared_mutex> lk(mu_);
    const size_t nt = thread_count(threads, n_q);
    std::vector<Scratch> scratch(nt);
    std::vector<Counters> counters(nt);
    std::vector<std::vector<std::pair<int32_t, int64_t>>> per(n_q);
    std::vector<std::vector<size_t>> deferred(nt);
    parallel_for(n_q, nt, 16, [&](size_t b, size_t e, size_t tid) {
        for (size_t i = b; i < e; ++i)
            if (radius_one(q + i * words_, r, 0, n_q, scratch[tid], counters[tid], per[i])) deferred[tid].push_back(i);
    });
    {
        std::vector<size_t> qi = merge_deferred(deferred);
        std::vector<const uint64_t*> qs(qi.size());
        std::vector<size_t> begins(qi.size(), 0);
        std::vector<std::vector<std::pair<int32_t, int64_t>>*> outs(qi.size());
        for (size_t j = 0; j < qi.size(); ++j) {
            qs[j] = q + qi[j] * words_;
            outs[j] = &per[qi[j]];
        }
        radius_scan_deferred(qs.data(), begins.data(), outs.data(), qi.size(), r, nt, scratch);
    }
    parallel_for(n_q, nt, 64, [&](size_t b, size_t e, size_t) {
        for (size_t i = b; i < e; ++i) std::sort(per[i].begin(), per[i].end());
    });
    RangeResult res;
    res.lims.resize(n_q + 1);
    res.lims[0] = 0;
    for (size_t i = 0; i < n_q; ++i) res.lims[i + 1] = res.lims[i] + static_cast<int64_t>(per[i].size());
    res.ids.resize(res.lims[n_q]);
    res.dists.resize(res.lims[n_q]);
    for (size_t i = 0; i < n_q; ++i) {
        size_t o = res.lims[i];
        for (size_t j = 0; j < per[i].size(); ++j) {
            res.dists[o + j] = per[i][j].first;
            res.ids[o + j] = per[i][j].second;
        }
        std::vector<std::pair<int32_t, int64_t>>().swap(per[i]);
    }
    Counters total;
    for (auto& c : counters) total.add(c);
    record("radius", total);
    return res;
}

}  // namespace imgsim
