// The MIH cost model: estimated nanoseconds for probing the tables against scanning, per query (radius,
// kNN) and per self-join plan; the constants it uses are in mih_internal.h.
#include <cmath>

#include "mih_internal.h"

namespace imgsim {

double mih_detail::scan_compute_cost_per_word() {
    switch (active_isa()) {
        case Isa::avx512: return 0.075;
        case Isa::avx2: return 0.2;
        default: return 2.7;
    }
}

double MihIndex::scan_cost(size_t rows, size_t batch) const {
    const double mem = codes_.size() * 8 > kScanCacheBytes ? kScanMemCostPerWord : kScanCachedMemCostPerWord;
    const double per_word = scan_compute_cost_per_word() +
                            mem / static_cast<double>(std::clamp<size_t>(batch, 1, kScanQueryBlock));
    return static_cast<double>(rows) * per_word * static_cast<double>(words_) + 50.0;
}

void mih_detail::radius_rule(uint32_t r, size_t m, std::vector<int>& rad) {
    int rp = static_cast<int>(r / m);
    size_t a = r % m;
    rad.resize(m);
    for (size_t t = 0; t < m; ++t) rad[t] = t <= a ? rp : rp - 1;
}

bool MihIndex::radius_prefers_scan(uint32_t r, size_t scan_rows, size_t batch, double* budget) const {
    size_t m = tables_.size();
    std::vector<int> rad;
    radius_rule(r, m, rad);
    double probes = 0, cands = 0;
    for (size_t t = 0; t < m; ++t) {
        const Table& T = tables_[order_[t]];
        int rr = std::min<int>(rad[t], static_cast<int>(T.len));
        double p = 0;
        for (int d = 0; d <= rr; ++d) p += binomial(T.len, static_cast<unsigned>(d));
        probes += p;
        cands += p * static_cast<double>(built_rows_) / std::ldexp(1.0, static_cast<int>(T.len));
    }
    double mih = probes * kProbeCost + cands * kCandidateCost;
    double scan = scan_cost(scan_rows, batch);
    *budget = scan;
    return mih > scan;
}

// ---------------------------------------------------------------------------------------------------
// The self-join plan.
//
// The bucket join (mih_selfjoin.cpp) sorts the codes by a table's key, then compares each bucket with
// itself and with every bucket whose key is within the table's substring radius (larger keys only),
// as contiguous blocks through the SIMD filter kernel. Its cost per table: building (key, sort, gather
// per row), one lookup per (bucket, neighbour key), one kernel call per (code, non-empty neighbour
// bucket), and one distance per compared pair. Compared pairs follow from the bit statistics: a random
// pair differs at bit i with probability 2 p_i (1 - p_i), so the chance that it lands within radius rho
// on a table's bits is a Poisson-binomial tail. pHash bits are far from fair (the DC bit is almost
// always set), and a near-constant bit in a key only adds probing (one more bit to flip) without
// splitting buckets, so plans that leave such bits out are costed too; leaving bits out keeps the join
// exact (the restricted distance of a pair within r is still <= r).
namespace {

// Nanoseconds, one core; set by hand and checked on 10^6 pHash-like codes at r = 10 (scale_bench's data),
// where the plans measured m = 4: 1.9-3.1 s, m = 5: 4.5 s, m = 3: 17 s, and the model ranks them alike
// (1.8, 3.0, 11.4 s). The absolute estimate runs low by up to 2x; only the ranking decides a plan.
constexpr double kJoinBuildCost = 15.0;  // per row per table: key, counting-sort scatter, code gather
constexpr double kJoinLookupCost = 3.0;  // per neighbour key looked up (keys near each other share lines)
constexpr double kJoinCallCost = 6.0;    // per (code, non-empty neighbour bucket)
constexpr double kJoinPairMemCost = 0.03;  // per compared pair, beyond the kernel's compute
constexpr size_t kBitSample = 65536;     // codes sampled for the bit statistics

// P(sum of independent Bernoulli(d_i) <= rho).
double within(const std::vector<double>& d, int rho) {
    if (rho < 0) return 0.0;
    std::vector<double> f(static_cast<size_t>(rho) + 1, 0.0);
    f[0] = 1.0;
    for (double di : d)
        for (int k = rho; k >= 0; --k) f[k] = f[k] * (1.0 - di) + (k ? f[k - 1] * di : 0.0);
    double s = 0;
    for (double v : f) s += v;
    return std::min(1.0, s);
}

double entropy_bits(double p) {
    if (p <= 0.0 || p >= 1.0) return 0.0;
    return -(p * std::log2(p) + (1.0 - p) * std::log2(1.0 - p));
}

}  // namespace

JoinPlan mih_detail::plan_self_join(const uint64_t* codes, size_t words, size_t rows, const uint64_t* dead,
                                    size_t live, uint32_t r, MihPath path) {
    JoinPlan plan;
    plan.words = words;
    const size_t bits = 64 * words;
    const double n = static_cast<double>(live);
    const double pair_cost =
        scan_compute_cost_per_word() * static_cast<double>(words) + kJoinPairMemCost;
    // The scan: every row against the later ones, blocks of kScanQueryBlock queries sharing each tile.
    plan.scan_ns = n * n / 2 *
                   (scan_compute_cost_per_word() * static_cast<double>(words) +
                    kScanMemCostPerWord * static_cast<double>(words) / static_cast<double>(kScanQueryBlock));
    plan.est_ns = plan.scan_ns;
    if (path == MihPath::scan || live < 2) return plan;

    // Bit frequencies over an even sample of the live rows.
    std::vector<double> p(bits, 0.0);
    size_t sampled = 0;
    const size_t stride = std::max<size_t>(1, rows / kBitSample);
    for (size_t row = 0; row < rows; row += stride) {
        if ((dead[row / 64] >> (row % 64)) & 1) continue;
        for (size_t b = 0; b < bits; ++b) p[b] += static_cast<double>((codes[row * words + b / 64] >> (b % 64)) & 1);
        ++sampled;
    }
    for (double& v : p) v /= static_cast<double>(std::max<size_t>(sampled, 1));
    // Bits by how much a random pair's agreement on them tells (-log2 P(agree)), most first.
    std::vector<double> info(bits);
    for (size_t b = 0; b < bits; ++b) info[b] = -std::log2(std::max(1e-12, p[b] * p[b] + (1 - p[b]) * (1 - p[b])));
    std::vector<uint32_t> order(bits);
    for (size_t b = 0; b < bits; ++b) order[b] = static_cast<uint32_t>(b);
    std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return info[a] > info[b]; });

    double best = -1;
    size_t last_k = 0;
    for (double floor_info : {0.0, 0.05, 0.15}) {
        size_t k = 0;
        while (k < bits && (floor_info == 0.0 || info[order[k]] >= floor_info)) ++k;
        if (k == 0 || k == last_k) continue;
        last_k = k;
        const size_t m_lo = (k + kMaxJoinKeyBits - 1) / kMaxJoinKeyBits;
        const size_t m_hi = std::min<size_t>(k, kMaxJoinTables);
        for (size_t m = m_lo; m <= m_hi; ++m) {
            // Deal the bits out in snake order (0..m-1, m-1..0, ...): equal lengths, balanced information.
            std::vector<std::vector<uint32_t>> sets(m);
            for (size_t j = 0; j < k; ++j) {
                const size_t round = j / m, pos = j % m;
                sets[round % 2 ? m - 1 - pos : pos].push_back(order[j]);
            }
            std::vector<int> rad;
            radius_rule(r, m, rad);
            double cost = 0;
            for (size_t t = 0; t < m && (best < 0 || cost < best); ++t) {
                if (rad[t] < 0) continue;
                const unsigned len = static_cast<unsigned>(sets[t].size());
                const int rho = std::min<int>(rad[t], static_cast<int>(len));
                std::vector<double> d;
                double h = 0;
                for (uint32_t b : sets[t]) {
                    d.push_back(2 * p[b] * (1 - p[b]));
                    h += entropy_bits(p[b]);
                }
                double v = 0;
                for (int e = 0; e <= rho; ++e) v += binomial(len, static_cast<unsigned>(e));
                const double keys = std::ldexp(1.0, static_cast<int>(len));
                const double groups = std::max(1.0, std::min({n, keys, std::exp2(h)}));
                const double occupied = groups / keys;
                cost += n * kJoinBuildCost + groups * v * kJoinLookupCost +
                        n * (1 + (v - 1) / 2 * occupied) * kJoinCallCost + n * n / 2 * within(d, rho) * pair_cost;
            }
            if (best >= 0 && cost >= best) continue;
            best = cost;
            plan.masks.assign(m, std::vector<uint64_t>(words, 0));
            plan.len.assign(m, 0);
            for (size_t t = 0; t < m; ++t) {
                for (uint32_t b : sets[t]) plan.masks[t][b / 64] |= uint64_t{1} << (b % 64);
                plan.len[t] = static_cast<uint32_t>(sets[t].size());
            }
            plan.rad = rad;
        }
    }
    if (path == MihPath::mih || best < plan.scan_ns) {
        plan.scan = false;
        plan.est_ns = best;
    } else {
        plan.masks.clear();
        plan.len.clear();
        plan.rad.clear();
    }
    return plan;
}

}  // namespace imgsim
