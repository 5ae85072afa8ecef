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

}  // namespace imgsim
