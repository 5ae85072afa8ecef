// Multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012 / TPAMI 2014): m hash tables over disjoint
// substrings, probed at growing substring radius; exact kNN, radius search and self-join, with a
// per-query fallback to the linear SIMD scan (the filter kernels of hamming_kernels.h, batched over
// queries) when probing would cost more.
#include "mih.h"

#include "hamming_kernels.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <exception>
#include <thread>

namespace imgsim {

namespace {

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

constexpr size_t kScanQueryBlockForCost = 32;  // = kScanQueryBlock below

int resolve_threads(int threads, size_t work) {
    unsigned hc = std::thread::hardware_concurrency();
    size_t t = threads <= 0 ? (hc ? hc : 1) : static_cast<size_t>(threads);
    t = std::min(t, std::max<size_t>(work, 1));
    return static_cast<int>(std::max<size_t>(t, 1));
}

// Runs f(begin, end, tid) over [0, n) in dynamically scheduled chunks of `grain` on `threads` threads.
// The first exception thrown by any worker is rethrown here.
template <class F>
void parallel_for(size_t n, int threads, size_t grain, F&& f) {
    grain = std::max<size_t>(grain, 1);
    if (threads <= 1 || n <= grain) {
        if (n) f(size_t{0}, n, 0);
        return;
    }
    std::atomic<size_t> next{0};
    std::exception_ptr err;
    std::mutex err_mu;
    auto worker = [&](int tid) {
        try {
            for (;;) {
                size_t b = next.fetch_add(grain);
                if (b >= n) break;
                f(b, std::min(n, b + grain), tid);
            }
        } catch (...) {
            std::lock_guard<std::mutex> lk(err_mu);
            if (!err) err = std::current_exception();
            next.store(n);
        }
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back(worker, t);
    worker(0);
    for (auto& th : pool) th.join();
    if (err) std::rethrow_exception(err);
}

double binomial(unsigned n, unsigned k) {
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

uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

}  // namespace

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

    IdMap() { reset(16); }
    void reset(size_t cap) {
        keys.assign(cap, 0);
        vals.assign(cap, kEmpty32);
        used = tombs = 0;
        mask = cap - 1;
    }
    uint32_t find(int64_t k) const {
        for (uint64_t i = splitmix64(static_cast<uint64_t>(k)) & mask;; i = (i + 1) & mask) {
            uint32_t v = vals[i];
            if (v == kEmpty32) return kEmpty32;
            if (v != kTomb && keys[i] == k) return v;
        }
    }
    void reserve(size_t n) {
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

// ---------------------------------------------------------------------------------------------------
MihIndex::MihIndex(size_t words, size_t m) : words_(words), m_fixed_(m), idmap_(new IdMap) {
    if (words != 1 && words != 2 && words != 4)
        throw std::invalid_argument("codes must have 64, 128 or 256 bits (1, 2 or 4 words), got " +
                                    std::to_string(words) + " words");
    size_t bits = 64 * words;
    size_t lo = (bits + kMaxSubstringBits - 1) / kMaxSubstringBits;
    if (m != 0 && (m < lo || m > bits))
        throw std::invalid_argument("m must be in [" + std::to_string(lo) + ", " + std::to_string(bits) +
                                    "] for " + std::to_string(bits) + "-bit codes (substrings of at most 32 bits), got " +
                                    std::to_string(m));
    dead_.clear();
}

MihIndex::~MihIndex() = default;

size_t MihIndex::auto_m(size_t bits, size_t n) {
    double lg = std::log2(static_cast<double>(std::max<size_t>(n, 2)));
    size_t m = static_cast<size_t>(std::lround(static_cast<double>(bits) / lg));
    size_t lo = (bits + kMaxSubstringBits - 1) / kMaxSubstringBits;
    size_t hi = bits / 4;  // substrings of at least 4 bits: below that a table is a handful of buckets
    return std::clamp(m, lo, hi);
}

size_t MihIndex::size() const {
    std::shared_lock<std::shared_mutex> lk(mu_);
    return row_ids_.size() - n_dead_;
}

bool MihIndex::contains(int64_t id) const {
    std::shared_lock<std::shared_mutex> lk(mu_);
    return idmap_->find(id) != kEmpty32;
}

std::vector<int64_t> MihIndex::ids() const {
    std::shared_lock<std::shared_mutex> lk(mu_);
    std::vector<int64_t> out;
    out.reserve(row_ids_.size() - n_dead_);
    for (size_t r = 0; r < row_ids_.size(); ++r)
        if (!((dead_[r / 64] >> (r % 64)) & 1)) out.push_back(row_ids_[r]);
    return out;
}

int64_t MihIndex::add(const uint64_t* codes, size_t n, const int64_t* ids) {
    std::unique_lock<std::shared_mutex> lk(mu_);
    if (n == 0) return ids ? 0 : next_id_;
    size_t rows = row_ids_.size();
    if (rows + n >= kEmpty32 - 1) throw std::invalid_argument("an index holds fewer than 2^32 - 2 rows");
    std::vector<int64_t> new_ids(n);
    if (ids) {
        std::copy(ids, ids + n, new_ids.begin());
        std::vector<int64_t> sorted(new_ids);
        std::sort(sorted.begin(), sorted.end());
        auto dup = std::adjacent_find(sorted.begin(), sorted.end());
        if (dup != sorted.end()) throw std::invalid_argument("duplicate id " + std::to_string(*dup) + " in the batch");
        for (int64_t id : new_ids)
            if (idmap_->find(id) != kEmpty32)
                throw std::invalid_argument("id " + std::to_string(id) + " is already in the index");
    } else {
        if (next_id_ > INT64_MAX - static_cast<int64_t>(n))
            throw std::invalid_argument("automatic ids would overflow int64; pass ids explicitly");
        for (size_t i = 0; i < n; ++i) new_ids[i] = next_id_ + static_cast<int64_t>(i);
    }
    codes_.insert(codes_.end(), codes, codes + n * words_);
    row_ids_.insert(row_ids_.end(), new_ids.begin(), new_ids.end());
    dead_.resize((rows + n + 63) / 64, 0);
    idmap_->reserve(idmap_->used + n);
    for (size_t i = 0; i < n; ++i) {
        idmap_->insert(new_ids[i], static_cast<uint32_t>(rows + i));
        // Automatic ids continue after the largest id ever added (never reused after a remove).
        if (new_ids[i] >= next_id_) next_id_ = new_ids[i] == INT64_MAX ? INT64_MAX : new_ids[i] + 1;
    }
    ++version_;
    return new_ids[0];
}

void MihIndex::remove(const int64_t* ids, size_t n) {
    std::unique_lock<std::shared_mutex> lk(mu_);
    std::vector<uint32_t> rows;
    rows.reserve(n);
    for (size_t i = 0; i < n; ++i) {
        uint32_t r = idmap_->find(ids[i]);
        if (r == kEmpty32) throw MihKeyError("id " + std::to_string(ids[i]) + " is not in the index", ids[i]);
        rows.push_back(r);
    }
    std::sort(rows.begin(), rows.end());
    rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
    for (uint32_t r : rows) {
        dead_[r / 64] |= uint64_t{1} << (r % 64);
        idmap_->erase(row_ids_[r]);
        ++n_dead_;
    }
    if (n) ++version_;
}

void MihIndex::set_path(MihPath p) {
    std::unique_lock<std::shared_mutex> lk(mu_);
    path_ = p;
    ++version_;
}

bool MihIndex::needs_rebuild_locked(bool force) const {
    size_t rows = row_ids_.size();
    if (rows == 0) return !tables_.empty();
    if (n_dead_ * 4 > rows) return true;  // compact: removed rows cost scan time and memory
    size_t delta = rows - built_rows_;
    if (force || path_ == MihPath::mih) return delta > 0 || tables_.empty();
    if (tables_.empty()) return true;
    return delta > kDeltaRows + built_rows_ / 32;
}

void MihIndex::ensure_built(bool force) {
    {
        std::shared_lock<std::shared_mutex> lk(mu_);
        if (!needs_rebuild_locked(force)) return;
    }
    std::unique_lock<std::shared_mutex> lk(mu_);
    if (needs_rebuild_locked(force)) rebuild_locked();
}

void MihIndex::compact_locked() {
    size_t rows = row_ids_.size(), w = 0;
    for (size_t r = 0; r < rows; ++r) {
        if ((dead_[r / 64] >> (r % 64)) & 1) continue;
        if (w != r) {
            std::copy(codes_.begin() + r * words_, codes_.begin() + (r + 1) * words_, codes_.begin() + w * words_);
            row_ids_[w] = row_ids_[r];
        }
        ++w;
    }
    codes_.resize(w * words_);
    codes_.shrink_to_fit();
    row_ids_.resize(w);
    row_ids_.shrink_to_fit();
    dead_.assign((w + 63) / 64, 0);
    n_dead_ = 0;
    idmap_->reset(16);
    idmap_->reserve(w);
    for (size_t r = 0; r < w; ++r) idmap_->insert(row_ids_[r], static_cast<uint32_t>(r));
}

void MihIndex::rebuild_locked() {
    if (n_dead_ > 0) compact_locked();
    size_t rows = row_ids_.size();
    size_t live = rows - n_dead_;
    size_t bits = 64 * words_;
    size_t m = m_fixed_ ? m_fixed_ : auto_m(bits, live);
    tables_.assign(m, Table{});
    // Substrings as equal as possible: the first bits % m get one bit more (paper, section 4).
    uint32_t off = 0;
    for (size_t i = 0; i < m; ++i) {
        uint32_t len = static_cast<uint32_t>(bits / m + (i < bits % m ? 1 : 0));
        tables_[i].set_range(off, len);
        off += len;
    }
    // Probe order: shortest substrings first, so the radius rule gives the extra bit of substring
    // radius to the tables with the fewest keys.
    order_.resize(m);
    for (size_t i = 0; i < m; ++i) order_[i] = static_cast<uint32_t>(i);
    std::stable_sort(order_.begin(), order_.end(),
                     [&](uint32_t a, uint32_t b) { return tables_[a].len < tables_[b].len; });
    int threads = resolve_threads(0, m);
    parallel_for(m, threads, 1, [&](size_t b, size_t e, int) {
        for (size_t i = b; i < e; ++i) tables_[i].build(codes_.data(), words_, rows, dead_, live);
    });
    built_rows_ = rows;
}

static double scan_compute_cost_per_word() {
    switch (active_isa()) {
        case Isa::avx512: return 0.075;
        case Isa::avx2: return 0.2;
        default: return 2.7;
    }
}

double MihIndex::scan_cost(size_t rows, size_t batch) const {
    const double mem = codes_.size() * 8 > kScanCacheBytes ? kScanMemCostPerWord : kScanCachedMemCostPerWord;
    const double per_word = scan_compute_cost_per_word() +
                            mem / static_cast<double>(std::clamp<size_t>(batch, 1, kScanQueryBlockForCost));
    return static_cast<double>(rows) * per_word * static_cast<double>(words_) + 50.0;
}

// Substring radii of the paper's exact radius rule (TPAMI 2014, Prop. 2): with r = m r' + a,
// 0 <= a < m, a code within r has one of the first a + 1 substrings within r' or one of the others
// within r' - 1. Entry t (probe order) is -1 where a table needs no probing.
static void radius_rule(uint32_t r, size_t m, std::vector<int>& rad) {
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
// Linear scans (the fallback, and the rows added since the last build).

// The scan runs as hamming_radius / hamming_topk do (hamming_search.cpp): rows in tiles that stay in
// L1d, each tile filtered in SIMD registers by a block of queries before the next tile, so a batch reads
// the codes from memory once per block of queries, and rows beyond the threshold never reach scalar
// code. Only rows that pass are checked against the removed-row bitmap and mapped to ids.
namespace {
constexpr size_t kScanTileBytes = 16 * 1024;
constexpr size_t kScanQueryBlock = 32;
static_assert(kScanQueryBlock == kScanQueryBlockForCost, "the cost model assumes this query block");
size_t scan_tile_rows(size_t words) { return std::max<size_t>(64, kScanTileBytes / (8 * words)); }

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
    parallel_for(qi.size(), std::max(nt, 1), kScanQueryBlock, [&](size_t b, size_t e, int tid) {
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

// Queries that chose the scan, gathered from the per-thread lists in query order.
static std::vector<size_t> merge_deferred(std::vector<std::vector<size_t>>& per_thread) {
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
    parallel_for(n, std::max(nt, 1), kScanQueryBlock, [&](size_t b, size_t e, int tid) {
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
    int nt = resolve_threads(threads, n_q);
    std::vector<Scratch> scratch(nt);
    std::vector<Counters> counters(nt);
    std::vector<std::vector<size_t>> deferred(nt);
    parallel_for(n_q, nt, 16, [&](size_t b, size_t e, int tid) {
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
    int nt = resolve_threads(threads, n_q);
    std::vector<Scratch> scratch(nt);
    std::vector<Counters> counters(nt);
    std::vector<std::vector<std::pair<int32_t, int64_t>>> per(n_q);
    std::vector<std::vector<size_t>> deferred(nt);
    parallel_for(n_q, nt, 16, [&](size_t b, size_t e, int tid) {
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
    parallel_for(n_q, nt, 64, [&](size_t b, size_t e, int) {
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

MihStats MihIndex::stats() const {
    MihStats st;
    {
        std::lock_guard<std::mutex> lk(stats_mu_);
        st = last_;
    }
    std::shared_lock<std::shared_mutex> lk(mu_);
    st.words = words_;
    st.m_auto = m_fixed_ == 0;
    st.m = tables_.size();
    st.substring_bits.clear();
    for (auto& T : tables_) st.substring_bits.push_back(T.len);
    st.size = row_ids_.size() - n_dead_;
    st.rows = row_ids_.size();
    st.indexed_rows = built_rows_;
    size_t bytes = codes_.capacity() * 8 + row_ids_.capacity() * 8 + dead_.capacity() * 8 + idmap_->bytes();
    for (auto& T : tables_) bytes += T.bytes();
    st.memory_bytes = bytes + sizeof(*this);
    return st;
}

// ---------------------------------------------------------------------------------------------------
// Self-join cursor.

MihSelfJoin::MihSelfJoin(std::shared_ptr<MihIndex> index, uint32_t r, int threads)
    : index_(std::move(index)), r_(r), threads_(threads) {
    index_->ensure_built(false);
    std::shared_lock<std::shared_mutex> lk(index_->mu_);
    version_ = index_->version_;
}

bool MihSelfJoin::next(size_t max_pairs, SelfJoinChunk& out) {
    max_pairs = std::max<size_t>(max_pairs, 1);
    out.a.clear();
    out.b.clear();
    out.dist.clear();
    MihIndex& ix = *index_;
    std::shared_lock<std::shared_mutex> lk(ix.mu_);
    if (ix.version_ != version_) throw MihConcurrentModification("the index changed during self_join; start a new one");
    const size_t rows = ix.row_ids_.size();
    MihIndex::Counters total;
    while (out.a.size() < max_pairs) {
        if (pending_pos_ < pending_.a.size()) {
            size_t take = std::min(max_pairs - out.a.size(), pending_.a.size() - pending_pos_);
            out.a.insert(out.a.end(), pending_.a.begin() + pending_pos_, pending_.a.begin() + pending_pos_ + take);
            out.b.insert(out.b.end(), pending_.b.begin() + pending_pos_, pending_.b.begin() + pending_pos_ + take);
            out.dist.insert(out.dist.end(), pending_.dist.begin() + pending_pos_,
                            pending_.dist.begin() + pending_pos_ + take);
            pending_pos_ += take;
            continue;
        }
        if (row_ >= rows) break;
        // Next block of query rows, in parallel; each row asks only for later rows.
        size_t b0 = row_, b1 = std::min(rows, row_ + block_);
        int nt = resolve_threads(threads_, b1 - b0);
        std::vector<MihIndex::Scratch> scratch(nt);
        std::vector<MihIndex::Counters> counters(nt);
        std::vector<std::vector<std::pair<int32_t, int64_t>>> per(b1 - b0);
        std::vector<std::vector<size_t>> deferred(nt);
        parallel_for(b1 - b0, nt, 4, [&](size_t b, size_t e, int tid) {
            for (size_t i = b; i < e; ++i) {
                size_t row = b0 + i;
                if ((ix.dead_[row / 64] >> (row % 64)) & 1) continue;
                if (ix.radius_one(ix.codes_.data() + row * ix.words_, r_, row + 1, b1 - b0, scratch[tid], counters[tid], per[i]))
                    deferred[tid].push_back(i);
            }
        });
        {
            // Rows that chose the scan, each against the rows after it, scanned as one batch.
            std::vector<size_t> qi = merge_deferred(deferred);
            std::vector<const uint64_t*> qs(qi.size());
            std::vector<size_t> begins(qi.size());
            std::vector<std::vector<std::pair<int32_t, int64_t>>*> outs(qi.size());
            for (size_t j = 0; j < qi.size(); ++j) {
                qs[j] = ix.codes_.data() + (b0 + qi[j]) * ix.words_;
                begins[j] = b0 + qi[j] + 1;
                outs[j] = &per[qi[j]];
            }
            ix.radius_scan_deferred(qs.data(), begins.data(), outs.data(), qi.size(), r_, nt, scratch);
        }
        parallel_for(b1 - b0, nt, 64, [&](size_t b, size_t e, int) {
            for (size_t i = b; i < e; ++i) std::sort(per[i].begin(), per[i].end());
        });
        for (auto& c : counters) total.add(c);
        pending_.a.clear();
        pending_.b.clear();
        pending_.dist.clear();
        pending_pos_ = 0;
        for (size_t i = 0; i < per.size(); ++i) {
            int64_t id = ix.row_ids_[b0 + i];
            for (auto& pr : per[i]) {
                pending_.a.push_back(std::min(id, pr.second));
                pending_.b.push_back(std::max(id, pr.second));
                pending_.dist.push_back(pr.first);
            }
        }
        // Keep a block's pairs near a few chunks: dense data (many duplicates) shrinks the block.
        size_t got = pending_.a.size();
        if (got > 4 * max_pairs)
            block_ = std::max<size_t>(1, block_ / 2);
        else if (got < max_pairs && block_ < 16384)
            block_ *= 2;
        row_ = b1;
    }
    ix.record("self_join", total);
    return !out.a.empty();
}

// ---------------------------------------------------------------------------------------------------
// CRC-32, slice-by-8.

static const uint32_t* crc_tables() {
    static uint32_t t[8][256];
    static bool init = [] {
        for (uint32_t i = 0; i < 256; ++i) {
            uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            t[0][i] = c;
        }
        for (uint32_t i = 0; i < 256; ++i)
            for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
        return true;
    }();
    (void)init;
    return &t[0][0];
}

uint32_t crc32_update(uint32_t crc, const void* data, size_t n) {
    const uint32_t* t = crc_tables();
    const unsigned char* p = static_cast<const unsigned char*>(data);
    crc = ~crc;
    while (n >= 8) {
        uint32_t lo, hi;
        std::memcpy(&lo, p, 4);
        std::memcpy(&hi, p + 4, 4);
        lo ^= crc;
        crc = t[7 * 256 + (lo & 0xFF)] ^ t[6 * 256 + ((lo >> 8) & 0xFF)] ^ t[5 * 256 + ((lo >> 16) & 0xFF)] ^
              t[4 * 256 + (lo >> 24)] ^ t[3 * 256 + (hi & 0xFF)] ^ t[2 * 256 + ((hi >> 8) & 0xFF)] ^
              t[1 * 256 + ((hi >> 16) & 0xFF)] ^ t[0 * 256 + (hi >> 24)];
        p += 8;
        n -= 8;
    }
    while (n--) crc = t[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

// ---------------------------------------------------------------------------------------------------
// File format (little-endian), version 1:
//   0  char[8] magic "IMGSMIH\0"     8  u32 version       12 u32 words       16 u32 m (0 = auto)
//   20 u32 reserved (0)              24 u64 count         32 i64 next automatic id
//   40 codes: count * words u64      ... ids: count i64    last 4 bytes: u32 CRC-32 of all before.
// Only live rows are written; tables are rebuilt on the first query after load (O(N), no sort for the
// usual m).

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the index file format is little-endian");
namespace {
constexpr char kMagic[8] = {'I', 'M', 'G', 'S', 'M', 'I', 'H', '\0'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeader = 40;

struct Fd {
    int fd = -1;
    ~Fd() {
        if (fd >= 0) ::close(fd);
    }
};

void write_all(int fd, const void* data, size_t n, const std::string& path) {
    const char* p = static_cast<const char*>(data);
    while (n) {
        ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t{1} << 30));
        if (w < 0) {
            if (errno == EINTR) continue;
            throw MihIoError(errno, "cannot write " + path + ": " + std::strerror(errno), path);
        }
        p += w;
        n -= static_cast<size_t>(w);
    }
}
}  // namespace

void MihIndex::save(const std::string& path) const {
    std::shared_lock<std::shared_mutex> lk(mu_);
    static std::atomic<uint64_t> counter{0};
    std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter.fetch_add(1));
    Fd f;
    f.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f.fd < 0) throw MihIoError(errno, "cannot create " + tmp + ": " + std::strerror(errno), tmp);
    try {
        uint64_t count = row_ids_.size() - n_dead_;
        unsigned char hdr[kHeader] = {};
        uint32_t u32[4] = {kVersion, static_cast<uint32_t>(words_), static_cast<uint32_t>(m_fixed_), 0};
        std::memcpy(hdr, kMagic, 8);
        std::memcpy(hdr + 8, u32, 16);
        std::memcpy(hdr + 24, &count, 8);
        std::memcpy(hdr + 32, &next_id_, 8);
        uint32_t crc = crc32_update(0, hdr, kHeader);
        write_all(f.fd, hdr, kHeader, tmp);
        // Live rows only, streamed through a bounded buffer.
        std::vector<uint64_t> buf;
        buf.reserve(1 << 16);
        auto flush = [&] {
            crc = crc32_update(crc, buf.data(), buf.size() * 8);
            write_all(f.fd, buf.data(), buf.size() * 8, tmp);
            buf.clear();
        };
        const size_t rows = row_ids_.size();
        for (size_t r = 0; r < rows; ++r) {
            if ((dead_[r / 64] >> (r % 64)) & 1) continue;
            buf.insert(buf.end(), codes_.begin() + r * words_, codes_.begin() + (r + 1) * words_);
            if (buf.size() + words_ > buf.capacity()) flush();
        }
        flush();
        for (size_t r = 0; r < rows; ++r) {
            if ((dead_[r / 64] >> (r % 64)) & 1) continue;
            buf.push_back(static_cast<uint64_t>(row_ids_[r]));
            if (buf.size() == buf.capacity()) flush();
        }
        flush();
        write_all(f.fd, &crc, 4, tmp);
        if (::fsync(f.fd) != 0) throw MihIoError(errno, "cannot fsync " + tmp + ": " + std::strerror(errno), tmp);
        int fd = f.fd;
        f.fd = -1;
        if (::close(fd) != 0) throw MihIoError(errno, "cannot close " + tmp + ": " + std::strerror(errno), tmp);
        if (::rename(tmp.c_str(), path.c_str()) != 0)
            throw MihIoError(errno, "cannot rename " + tmp + " to " + path + ": " + std::strerror(errno), path);
    } catch (...) {
        ::unlink(tmp.c_str());
        throw;
    }
    // Make the rename durable: fsync the directory (best effort; some filesystems refuse).
    std::string dir = path.find('/') == std::string::npos ? "." : path.substr(0, path.rfind('/'));
    if (dir.empty()) dir = "/";
    Fd d;
    d.fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (d.fd >= 0) (void)::fsync(d.fd);
}

std::shared_ptr<MihIndex> MihIndex::load(const std::string& path) {
    Fd f;
    f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (f.fd < 0) throw MihIoError(errno, "cannot open " + path + ": " + std::strerror(errno), path);
    struct stat st;
    if (::fstat(f.fd, &st) != 0) throw MihIoError(errno, "cannot stat " + path + ": " + std::strerror(errno), path);
    if (!S_ISREG(st.st_mode)) throw MihFormatError(path + " is not a regular file");
    size_t size = static_cast<size_t>(st.st_size);
    if (size < kHeader + 4) throw MihFormatError(path + ": too short for an index file (" + std::to_string(size) + " bytes)");
    std::vector<unsigned char> data(size);
    size_t got = 0;
    while (got < size) {
        ssize_t n = ::read(f.fd, data.data() + got, size - got);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw MihIoError(errno, "cannot read " + path + ": " + std::strerror(errno), path);
        }
        if (n == 0) break;
        got += static_cast<size_t>(n);
    }
    if (got != size) throw MihFormatError(path + ": file shrank while reading");
    if (std::memcmp(data.data(), kMagic, 8) != 0) throw MihFormatError(path + ": not an imgsim_fast MIH index (bad magic)");
    uint32_t u32[4];
    uint64_t count;
    int64_t next_id;
    std::memcpy(u32, data.data() + 8, 16);
    std::memcpy(&count, data.data() + 24, 8);
    std::memcpy(&next_id, data.data() + 32, 8);
    if (u32[0] != kVersion)
        throw MihFormatError(path + ": index file version " + std::to_string(u32[0]) + ", this build reads version " +
                             std::to_string(kVersion));
    uint32_t words = u32[1];
    if (words != 1 && words != 2 && words != 4) throw MihFormatError(path + ": corrupt header (words = " + std::to_string(words) + ")");
    uint64_t row_bytes = 8ull * words + 8;
    if (count > (size - kHeader - 4) / row_bytes || kHeader + count * row_bytes + 4 != size)
        throw MihFormatError(path + ": truncated or corrupt (size " + std::to_string(size) + " bytes does not match " +
                             std::to_string(count) + " codes)");
    uint32_t stored;
    std::memcpy(&stored, data.data() + size - 4, 4);
    if (crc32_update(0, data.data(), size - 4) != stored) throw MihFormatError(path + ": checksum mismatch (corrupt file)");
    std::shared_ptr<MihIndex> ix;
    try {
        ix = std::make_shared<MihIndex>(words, u32[2]);
    } catch (const std::invalid_argument& e) {
        throw MihFormatError(path + ": corrupt header (" + e.what() + ")");
    }
    std::vector<uint64_t> codes(count * words);
    std::vector<int64_t> ids(count);
    if (count) {
        std::memcpy(codes.data(), data.data() + kHeader, count * words * 8);
        std::memcpy(ids.data(), data.data() + kHeader + count * words * 8, count * 8);
    }
    std::vector<unsigned char>().swap(data);
    try {
        ix->add(codes.data(), count, ids.data());
    } catch (const std::invalid_argument& e) {
        throw MihFormatError(path + ": corrupt payload (" + e.what() + ")");
    }
    ix->next_id_ = std::max(ix->next_id_, next_id);
    return ix;
}

}  // namespace imgsim
