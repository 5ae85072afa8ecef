// Internal to the mih_*.cpp files: the pieces of the MIH index they share (hash tables, id map,
// per-thread scratch, probe enumeration, cost constants). No Python here; the public interface is mih.h.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "hamming_kernels.h"
#include "mih.h"
#include "parallel.h"

namespace imgsim {
namespace mih_detail {

// Hot per-candidate helpers are always inlined so they take the popcnt instruction inside the
// target_clones("popcnt") copies of the query functions (the shipped build has no -march flags).
#define MIH_INLINE inline __attribute__((always_inline))
#define MIH_CLONES __attribute__((target_clones("popcnt", "default")))

MIH_INLINE int popcount64(uint64_t x) { return __builtin_popcountll(x); }

MIH_INLINE int code_distance(const uint64_t* a, const uint64_t* b, size_t words, uint64_t* x) {
    int d = 0;
    for (size_t w = 0; w < words; ++w) {
        x[w] = a[w] ^ b[w];
        d += popcount64(x[w]);
    }
    return d;
}

constexpr uint32_t kEmpty32 = 0xFFFFFFFFu;
constexpr uint64_t kEmpty64 = ~uint64_t{0};

// Cost model in rough nanoseconds, single core, fitted on 1M and 10M 64-bit codes (tables of 21-22
// bits): a bucket lookup is a cache miss softened by prefetching, a candidate a random code load. A
// scanned row costs the filter kernel's compute per word (measured per SIMD target: AVX-512 VPOPCNTDQ
// 0.075 ns, AVX2 0.2 ns, serial 2.7 ns) plus its memory traffic shared by the block of queries that
// scan a tile together (up to kScanQueryBlock): 0.25 ns per word when the codes exceed the last-level
// cache, 0.06 ns when they fit. With the batched filter scan the measured crossover is r ~ 9-10 on
// uniform and clustered codes at 1M (batches of 200 queries); see imgsim_fast/bench/index_bench.py.
constexpr double kProbeCost = 25.0;
constexpr double kCandidateCost = 20.0;
constexpr double kScanMemCostPerWord = 0.25;
constexpr double kScanCachedMemCostPerWord = 0.06;
constexpr size_t kScanCacheBytes = size_t{16} << 20;

// Rows added since the last build are scanned linearly until there are this many (+ 1/32 of the
// indexed rows); then the next query rebuilds the tables.
constexpr size_t kDeltaRows = 256;

// The bucket self-join keys a table on at most this many bits (its lookup array has 2^bits entries when
// dense) and uses at most this many tables.
constexpr size_t kMaxJoinKeyBits = 32;
constexpr size_t kMaxJoinTables = 64;

// The linear scan filters rows in tiles of this many bytes (they stay in L1d) for blocks of this many
// queries, so a batch reads the codes from memory once per block (as hamming_search.cpp does).
constexpr size_t kScanTileBytes = 16 * 1024;
constexpr size_t kScanQueryBlock = 32;
inline size_t scan_tile_rows(size_t words) { return std::max<size_t>(64, kScanTileBytes / (8 * words)); }

inline double binomial(unsigned n, unsigned k) {
    if (k > n) return 0.0;
    double r = 1.0;
    for (unsigned i = 1; i <= k; ++i) r = r * (n - k + i) / i;
    return r;
}

// All len-bit masks of popcount d in Gosper's order; d = 0 yields the single mask 0.
struct Combos {
    uint64_t cur, limit;
    bool done;
    Combos(unsigned len, unsigned d) : cur((d >= 64) ? 0 : ((uint64_t{1} << d) - 1)), limit(uint64_t{1} << len) {
        done = d > len;
    }
    MIH_INLINE bool next(uint64_t& out) {
        if (done) return false;
        out = cur;
        if (cur == 0) {
            done = true;
        } else {
            uint64_t c = cur & (0 - cur);
            uint64_t r = cur + c;
            cur = (((r ^ cur) >> 2) >> __builtin_ctzll(c)) | r;
            if (cur >= limit) done = true;
        }
        return true;
    }
};

// Walks every row whose substring in table T lies at exactly distance d from key qk: keys are generated
// 16 at a time and prefetched before they are looked up, so the table's cache misses overlap. visit(row)
// sees each posting; after each batch of keys, stop() may end the walk (returns true when it did).
// T's type is deduced: MihIndex::Table is private to the index.
template <class Tab, class Visit, class Stop>
MIH_INLINE bool probe_shell(const Tab& T, uint32_t qk, unsigned d, uint64_t& probes, Visit&& visit, Stop&& stop) {
    constexpr int kBatch = 16;
    uint32_t keys[kBatch];
    Combos gen(T.len, d);
    for (;;) {
        int nb = 0;
        uint64_t mask;
        while (nb < kBatch && gen.next(mask)) {
            keys[nb] = qk ^ static_cast<uint32_t>(mask);
            T.prefetch(keys[nb]);
            ++nb;
        }
        if (nb == 0) return false;
        probes += nb;
        for (int j = 0; j < nb; ++j) {
            uint32_t pb, pe;
            if (!T.lookup(keys[j], pb, pe)) continue;
            for (uint32_t p = pb; p < pe; ++p) visit(T.postings[p]);
        }
        if (stop()) return true;
    }
}

inline uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// Substring radii of the paper's exact radius rule (TPAMI 2014, Prop. 2): with r = m r' + a,
// 0 <= a < m, a code within r has one of the first a + 1 substrings within r' or one of the others
// within r' - 1 (the substrings may cover any disjoint bit sets, not all bits: the distance restricted
// to them is still <= r). Entry t (probe order) is -1 where a table needs no probing. mih_cost.cpp.
void radius_rule(uint32_t r, size_t m, std::vector<int>& rad);

// Estimated ns per word for the filter kernel's compute on the active SIMD target. mih_cost.cpp.
double scan_compute_cost_per_word();

// How the self-join runs (mih_cost.cpp plan_self_join). Either the batched scan of every row against
// the later rows, or the bucket join: m tables over disjoint bit sets (chosen from the codes' bit
// statistics, not necessarily contiguous), each joined bucket against bucket (mih_selfjoin.cpp).
struct JoinPlan {
    bool scan = true;
    size_t words = 1;
    std::vector<std::vector<uint64_t>> masks;  // per table: `words` masks of the bits it keys on
    std::vector<uint32_t> len;                 // per table: popcount of its masks (<= 32)
    std::vector<int> rad;                      // per table: substring radius (radius_rule; -1: not joined)
    double est_ns = 0;                         // estimated cost of the chosen plan
    double scan_ns = 0;                        // estimated cost of the scan join
};

// rows: stored rows, `dead` the removed-row bitmap, live: rows not removed. The bucket plan is the
// cheapest over m and over which near-constant bits to leave out (by the estimates in mih_cost.cpp);
// `path` forces the scan or the bucket join, else the cheaper one runs.
JoinPlan plan_self_join(const uint64_t* codes, size_t words, size_t rows, const uint64_t* dead, size_t live,
                        uint32_t r, MihPath path);

// Queries that chose the scan, gathered from the per-thread lists in query order. mih_search.cpp.
std::vector<size_t> merge_deferred(std::vector<std::vector<size_t>>& per_thread);

}  // namespace mih_detail

// The structs below (members of MihIndex) use the helpers above unqualified.
using namespace mih_detail;

// ---------------------------------------------------------------------------------------------------
// One hash table over one substring: bit range [off, off + len) of the code, len <= 32. Postings are
// rows grouped by substring value (CSR). Dense keys (2^len not much above the row count) are addressed
// directly through an offsets array; sparse ones through open addressing on (key, group) pairs, one
// cache line per probe either way.
struct MihIndex::Table {
    uint32_t off = 0, len = 0;
    uint32_t word = 0, shift = 0;
    bool straddle = false;
    uint64_t mask = 0;
    bool direct = true;
    std::vector<uint32_t> offsets;  // direct: 2^len + 1 entries; hashed: groups + 1
    std::vector<uint64_t> slots;    // hashed: key << 32 | group, or kEmpty64
    uint64_t slot_mask = 0;
    std::vector<uint32_t> postings;

    void set_range(uint32_t o, uint32_t l) {
        off = o;
        len = l;
        word = o / 64;
        shift = o % 64;
        straddle = shift + len > 64;
        mask = (len >= 64) ? ~uint64_t{0} : ((uint64_t{1} << len) - 1);
    }
    MIH_INLINE uint32_t extract(const uint64_t* c) const {
        uint64_t v = c[word] >> shift;
        if (straddle) v |= c[word + 1] << (64 - shift);
        return static_cast<uint32_t>(v & mask);
    }
    MIH_INLINE uint64_t slot_of(uint32_t key) const {
        return (static_cast<uint64_t>(key) * 0x9E3779B97F4A7C15ull >> 32) & slot_mask;
    }
    MIH_INLINE void prefetch(uint32_t key) const {
        if (direct)
            __builtin_prefetch(&offsets[key]);
        else
            __builtin_prefetch(&slots[slot_of(key)]);
    }
    MIH_INLINE bool lookup(uint32_t key, uint32_t& b, uint32_t& e) const {
        if (direct) {
            b = offsets[key];
            e = offsets[key + 1];
            return b != e;
        }
        for (uint64_t i = slot_of(key);; i = (i + 1) & slot_mask) {
            uint64_t s = slots[i];
            if (s == kEmpty64) return false;
            if (static_cast<uint32_t>(s >> 32) == key) {
                uint32_t g = static_cast<uint32_t>(s);
                b = offsets[g];
                e = offsets[g + 1];
                return true;
            }
        }
    }
    size_t bytes() const {
        return offsets.capacity() * 4 + slots.capacity() * 8 + postings.capacity() * 4 + sizeof(*this);
    }

    void build(const uint64_t* codes, size_t words, size_t rows, const std::vector<uint64_t>& dead, size_t live) {
        auto is_dead = [&](size_t r) { return (dead[r / 64] >> (r % 64)) & 1; };
        postings.assign(live, 0);
        offsets.clear();
        slots.clear();
        // Direct addressing costs 4 * 2^len bytes; worth it while that stays within a few times the
        // postings (the paper's choice of m makes 2^len close to N).
        direct = len <= 12 || (uint64_t{1} << len) <= 4 * static_cast<uint64_t>(std::max<size_t>(live, 1));
        if (direct) {
            size_t nk = size_t{1} << len;
            offsets.assign(nk + 1, 0);
            for (size_t r = 0; r < rows; ++r)
                if (!is_dead(r)) offsets[extract(codes + r * words) + 1]++;
            for (size_t k = 0; k < nk; ++k) offsets[k + 1] += offsets[k];
            std::vector<uint32_t> pos(offsets.begin(), offsets.end() - 1);
            for (size_t r = 0; r < rows; ++r)
                if (!is_dead(r)) postings[pos[extract(codes + r * words)]++] = static_cast<uint32_t>(r);
            return;
        }
        std::vector<uint64_t> kr;
        kr.reserve(live);
        for (size_t r = 0; r < rows; ++r)
            if (!is_dead(r)) kr.push_back(static_cast<uint64_t>(extract(codes + r * words)) << 32 | r);
        std::sort(kr.begin(), kr.end());
        size_t groups = 0;
        for (size_t i = 0; i < kr.size(); ++i)
            if (i == 0 || (kr[i] >> 32) != (kr[i - 1] >> 32)) ++groups;
        size_t cap = 2;
        while (cap < 2 * groups) cap <<= 1;
        slots.assign(cap, kEmpty64);
        slot_mask = cap - 1;
        offsets.reserve(groups + 1);
        for (size_t i = 0; i < kr.size(); ++i) {
            uint32_t key = static_cast<uint32_t>(kr[i] >> 32);
            if (i == 0 || (kr[i] >> 32) != (kr[i - 1] >> 32)) {
                uint64_t g = offsets.size();
                offsets.push_back(static_cast<uint32_t>(i));
                uint64_t s = slot_of(key);
                while (slots[s] != kEmpty64) s = (s + 1) & slot_mask;
                slots[s] = static_cast<uint64_t>(key) << 32 | g;
            }
            postings[i] = static_cast<uint32_t>(kr[i]);
        }
        offsets.push_back(static_cast<uint32_t>(kr.size()));
    }
};

// ---------------------------------------------------------------------------------------------------
// id -> row, open addressing with tombstones (a std::unordered_map costs ~4x the memory).
struct MihIndex::IdMap {
    static constexpr uint32_t kTomb = 0xFFFFFFFEu;
    std::vector<int64_t> keys;
    std::vector<uint32_t> vals;  // row, kEmpty32 or kTomb
    size_t used = 0, tombs = 0;
    uint64_t mask = 0;
    // While every id equals its row (automatic ids, nothing removed) the map is the identity and stores
    // nothing: at 10^8 codes the table would take ~6 GB (12 bytes a slot at <= 35% load) beside 1.6 GB
    // of codes and ids. The first other id or removal builds the table.
    bool identity = true;

    IdMap() { reset(16); }
    void clear() {
        identity = true;
        reset(16);
    }
    void materialize() {
        const size_t n = used;
        identity = false;
        reset(16);
        reserve(n + 1);
        for (size_t r = 0; r < n; ++r) insert(static_cast<int64_t>(r), static_cast<uint32_t>(r));
    }
    void reset(size_t cap) {
        keys.assign(cap, 0);
        vals.assign(cap, kEmpty32);
        used = tombs = 0;
        mask = cap - 1;
    }
    uint32_t find(int64_t k) const {
        if (identity) return k >= 0 && static_cast<uint64_t>(k) < used ? static_cast<uint32_t>(k) : kEmpty32;
        for (uint64_t i = splitmix64(static_cast<uint64_t>(k)) & mask;; i = (i + 1) & mask) {
            uint32_t v = vals[i];
            if (v == kEmpty32) return kEmpty32;
            if (v != kTomb && keys[i] == k) return v;
        }
    }
    void reserve(size_t n) {
        if (identity) return;
        if ((n + tombs) * 10 <= keys.size() * 7) return;
        size_t cap = 16;
        while (n * 10 > cap * 7 / 2) cap <<= 1;  // rehash to at most ~35% load
        std::vector<int64_t> ok;
        std::vector<uint32_t> ov;
        ok.swap(keys);
        ov.swap(vals);
        reset(cap);
        for (size_t i = 0; i < ok.size(); ++i)
            if (ov[i] != kEmpty32 && ov[i] != kTomb) insert(ok[i], ov[i]);
    }
    void insert(int64_t k, uint32_t row) {  // k must be absent; call reserve(used + 1) first
        if (identity) {
            if (k == static_cast<int64_t>(row) && row == used) {
                ++used;
                return;
            }
            materialize();
        }
        reserve(used + 1);  // a no-op unless the batch's reserve ran while the map was the identity
        for (uint64_t i = splitmix64(static_cast<uint64_t>(k)) & mask;; i = (i + 1) & mask) {
            if (vals[i] == kEmpty32) {
                keys[i] = k;
                vals[i] = row;
                ++used;
                return;
            }
        }
    }
    void erase(int64_t k) {
        if (identity) materialize();
        for (uint64_t i = splitmix64(static_cast<uint64_t>(k)) & mask;; i = (i + 1) & mask) {
            uint32_t v = vals[i];
            if (v == kEmpty32) return;
            if (v != kTomb && keys[i] == k) {
                vals[i] = kTomb;
                --used;
                ++tombs;
                return;
            }
        }
    }
    size_t bytes() const { return keys.capacity() * 8 + vals.capacity() * 4; }
};

// Per-thread buffers for one query at a time.
struct MihIndex::Scratch {
    std::vector<uint32_t> idx, dist;  // the rows of one scan tile that pass the filter
    std::vector<std::pair<int32_t, int64_t>> heap;
    std::vector<std::vector<std::pair<int32_t, int64_t>>> heaps;  // one per query of a scan block
    Scratch() : idx(kBlock), dist(kBlock) {}
    static constexpr size_t kBlock = 2048;  // >= scan_tile_rows(words) for every words
};

struct MihIndex::Counters {
    uint64_t queries = 0, scanned = 0, probes = 0, candidates = 0;
    uint64_t knn_tried = 0, knn_aborted = 0;  // kNN queries that probed / gave up probing for the scan
    uint64_t radius_tried = 0, radius_aborted = 0;  // the same for radius queries (dense clusters)
    void add(const Counters& o) {
        queries += o.queries;
        scanned += o.scanned;
        probes += o.probes;
        candidates += o.candidates;
    }
};

}  // namespace imgsim
