// The resumable all-pairs self-join cursor (MihSelfJoin): the bucket join of a JoinPlan, table by table,
// or the batched scan of each row against the later rows.
//
// Bucket join, per table t with substring radius rho_t: the live codes are sorted by their key (the bits
// of the table's mask, gathered) into a bucket-contiguous copy; then every bucket is compared with
// itself (pairs i < j) and with each bucket whose key k' is within rho_t of its key k and larger (k' > k),
// block against block with the SIMD filter kernel. A pair within r is within rho_t on some table
// (radius_rule), and is kept only from the first table where it is (the same check MIH's radius search
// makes on candidates), so it comes out exactly once. Against probing the tables once per code, a
// neighbour key is looked up once per bucket, and a candidate is a contiguous load, not a random one.
#include <cstring>

#include "mih_internal.h"

namespace imgsim {

namespace {

constexpr uint32_t kNoGroup = 0xFFFFFFFFu;
// Below this many codes in a neighbour bucket an inline popcount loop beats a kernel call.
constexpr size_t kInlineRows = 16;
constexpr size_t kGroupGrain = 64;  // buckets per parallel chunk
constexpr size_t kJoinTile = 2048;  // rows per filter kernel call

struct Pair {
    uint32_t a, b;  // positions in the table's sorted order
    int32_t d;
};

// One table of the bucket join: the codes in key order, the buckets, key -> bucket.
struct JoinTable {
    size_t words = 1;
    uint32_t len = 0;
    std::vector<uint32_t> key_of_byte;  // [(w * 8 + byte) * 256 + value] -> key bits
    std::vector<uint32_t> bytes;        // (w * 8 + byte) positions where the mask has bits
    std::vector<uint32_t> gkey, gstart; // buckets in key order; bucket g holds [gstart[g], gstart[g + 1])
    std::vector<uint32_t> rows;         // row of each sorted position
    std::vector<uint64_t> codes;        // codes in sorted order
    bool direct = true;
    std::vector<uint32_t> dir;          // direct: key -> bucket or kNoGroup
    std::vector<uint64_t> slots;        // otherwise: key << 32 | bucket, open addressing
    uint64_t slot_mask = 0;

    MIH_INLINE uint32_t key(const uint64_t* c) const {
        uint32_t k = 0;
        for (uint32_t wb : bytes) k |= key_of_byte[wb * 256 + ((c[wb / 8] >> (8 * (wb % 8))) & 0xFF)];
        return k;
    }
    MIH_INLINE uint64_t slot_of(uint32_t k) const {
        return (static_cast<uint64_t>(k) * 0x9E3779B97F4A7C15ull >> 32) & slot_mask;
    }
    MIH_INLINE uint32_t group_of(uint32_t k) const {
        if (direct) return dir[k];
        for (uint64_t i = slot_of(k);; i = (i + 1) & slot_mask) {
            const uint64_t s = slots[i];
            if (s == kEmpty64) return kNoGroup;
            if (static_cast<uint32_t>(s >> 32) == k) return static_cast<uint32_t>(s);
        }
    }

    void build(const std::vector<uint64_t>& mask, uint32_t length, const uint64_t* all, size_t w, size_t n_rows,
               const uint64_t* dead, size_t live) {
        words = w;
        len = length;
        // Key bit j is the j-th set bit of the mask (word 0 first, low bit first).
        key_of_byte.assign(words * 8 * 256, 0);
        bytes.clear();
        uint32_t next_bit = 0;
        for (size_t wi = 0; wi < words; ++wi) {
            for (uint32_t byte = 0; byte < 8; ++byte) {
                const uint32_t m8 = static_cast<uint32_t>((mask[wi] >> (8 * byte)) & 0xFF);
                if (!m8) continue;
                const uint32_t wb = static_cast<uint32_t>(wi * 8 + byte);
                bytes.push_back(wb);
                uint32_t pos[8], np = 0;
                for (uint32_t b = 0; b < 8; ++b)
                    if ((m8 >> b) & 1) pos[np++] = b;
                for (uint32_t v = 0; v < 256; ++v) {
                    uint32_t k = 0;
                    for (uint32_t j = 0; j < np; ++j) k |= ((v >> pos[j]) & 1u) << (next_bit + j);
                    key_of_byte[wb * 256 + v] = k;
                }
                next_bit += np;
            }
        }
        std::vector<uint32_t> live_rows;
        live_rows.reserve(live);
        for (size_t r = 0; r < n_rows; ++r)
            if (!((dead[r / 64] >> (r % 64)) & 1)) live_rows.push_back(static_cast<uint32_t>(r));
        const size_t n = live_rows.size();
        const uint64_t nkeys = uint64_t{1} << len;
        direct = nkeys <= std::max<uint64_t>(4 * static_cast<uint64_t>(n), 4096);
        rows.resize(n);
        gkey.clear();
        gstart.clear();
        if (direct) {
            // Counting sort on the key: O(n + 2^len), stable (rows stay in row order within a bucket).
            std::vector<uint32_t> keys(n);
            std::vector<uint32_t> start(nkeys + 1, 0);
            for (size_t i = 0; i < n; ++i) {
                keys[i] = key(all + static_cast<size_t>(live_rows[i]) * words);
                ++start[keys[i] + 1];
            }
            dir.assign(nkeys, kNoGroup);
            for (uint64_t k = 0; k < nkeys; ++k) {
                if (start[k + 1]) {
                    dir[k] = static_cast<uint32_t>(gkey.size());
                    gkey.push_back(static_cast<uint32_t>(k));
                    gstart.push_back(start[k]);
                }
                start[k + 1] += start[k];
            }
            gstart.push_back(static_cast<uint32_t>(n));
            for (size_t i = 0; i < n; ++i) rows[start[keys[i]]++] = live_rows[i];
        } else {
            std::vector<uint64_t> kr(n);
            for (size_t i = 0; i < n; ++i)
                kr[i] = static_cast<uint64_t>(key(all + static_cast<size_t>(live_rows[i]) * words)) << 32 | live_rows[i];
            std::sort(kr.begin(), kr.end());
            for (size_t i = 0; i < n; ++i) {
                rows[i] = static_cast<uint32_t>(kr[i]);
                if (i == 0 || (kr[i] >> 32) != (kr[i - 1] >> 32)) {
                    gkey.push_back(static_cast<uint32_t>(kr[i] >> 32));
                    gstart.push_back(static_cast<uint32_t>(i));
                }
            }
            gstart.push_back(static_cast<uint32_t>(n));
            size_t cap = 2;
            while (cap < 2 * gkey.size()) cap <<= 1;
            slots.assign(cap, kEmpty64);
            slot_mask = cap - 1;
            for (size_t g = 0; g < gkey.size(); ++g) {
                uint64_t s = slot_of(gkey[g]);
                while (slots[s] != kEmpty64) s = (s + 1) & slot_mask;
                slots[s] = static_cast<uint64_t>(gkey[g]) << 32 | g;
            }
        }
        std::vector<uint32_t>().swap(live_rows);
        codes.resize(n * words);
        for (size_t i = 0; i < n; ++i)
            std::memcpy(&codes[i * words], all + static_cast<size_t>(rows[i]) * words, 8 * words);
    }
};

}  // namespace

struct MihSelfJoin::State {
    JoinPlan plan;
    // Bucket join: the table being joined and the next bucket; the scan: the next row.
    size_t table = 0;
    bool built = false;
    JoinTable tab;
    size_t next = 0;
    size_t block = 1024;  // buckets (or rows) per step, adapted to the pair density
};

MihSelfJoin::MihSelfJoin(std::shared_ptr<MihIndex> index, uint32_t r, int threads)
    : index_(std::move(index)), r_(r), threads_(threads), st_(new State) {
    std::shared_lock<std::shared_mutex> lk(index_->mu_);
    version_ = index_->version_;
    MihIndex& ix = *index_;
    const size_t rows = ix.row_ids_.size();
    st_->plan = plan_self_join(ix.codes_.data(), ix.words_, rows, ix.dead_.data(), rows - ix.n_dead_, r, ix.path_);
    if (st_->plan.scan) st_->block = 64;
}

MihSelfJoin::~MihSelfJoin() = default;

namespace {

// Per-thread buffers of the bucket join.
struct JoinScratch {
    std::vector<uint32_t> idx, dist;  // filter kernel output, one tile
    std::vector<uint64_t> near;       // codes of a bucket's neighbour buckets, gathered contiguous
    std::vector<uint32_t> near_pos;   // their sorted positions
    JoinScratch() : idx(kJoinTile), dist(kJoinTile) {}
};

// The neighbour buckets of one bucket are gathered into one contiguous run (up to this many codes) and
// every code of the bucket is filtered against the run in one kernel call per tile: with ~10-100 codes
// per bucket, a call per (code, neighbour bucket) costs more than the distances themselves.
constexpr size_t kGatherRows = 8192;

// The pairs of buckets [g0, g1) of table t: each bucket with itself and with its larger neighbour keys.
// out gets pairs in bucket order; the order within a bucket is fixed by the data (not the threads).
MIH_CLONES void join_buckets(const JoinTable& T, const JoinPlan& plan, size_t t, uint32_t r, size_t g0, size_t g1,
                             JoinScratch& js, std::vector<Pair>& out, uint64_t& probes, uint64_t& compares) {
    const HammingKernels& K = active_kernels();
    const size_t W = T.words;
    const int rho = std::min<int>(plan.rad[t], static_cast<int>(T.len));
    const uint64_t* codes = T.codes.data();
    const size_t tile = js.idx.size();
    // Found by an earlier table (one whose radius the pair's restricted distance meets): skip.
    auto earlier = [&](const uint64_t* a, const uint64_t* b) __attribute__((always_inline)) {
        for (size_t u = 0; u < t; ++u) {
            if (plan.rad[u] < 0) continue;
            int du = 0;
            for (size_t w = 0; w < W; ++w) du += popcount64((a[w] ^ b[w]) & plan.masks[u][w]);
            if (du <= plan.rad[u]) return true;
        }
        return false;
    };
    // Code at position pa against nb codes stored contiguously at `base`; pos(j) is the position of the
    // j-th of them.
    auto compare = [&](uint32_t pa, const uint64_t* base, size_t nb, auto&& pos) __attribute__((always_inline)) {
        const uint64_t* a = codes + static_cast<size_t>(pa) * W;
        compares += nb;
        if (nb < kInlineRows) {
            for (size_t j = 0; j < nb; ++j) {
                const uint64_t* b = base + j * W;
                int d = 0;
                for (size_t w = 0; w < W; ++w) d += popcount64(a[w] ^ b[w]);
                if (d <= static_cast<int>(r) && !earlier(a, b)) out.push_back(Pair{pa, pos(j), d});
            }
            return;
        }
        for (size_t j0 = 0; j0 < nb; j0 += tile) {
            const size_t len = std::min(tile, nb - j0);
            const size_t c = K.filter_le(a, base + j0 * W, len, W, r, js.idx.data(), js.dist.data());
            for (size_t u = 0; u < c; ++u) {
                const size_t j = j0 + js.idx[u];
                if (!earlier(a, base + j * W)) out.push_back(Pair{pa, pos(j), static_cast<int32_t>(js.dist[u])});
            }
        }
    };
    for (size_t g = g0; g < g1; ++g) {
        const uint32_t s = T.gstart[g], e = T.gstart[g + 1];
        for (uint32_t i = s; i + 1 < e; ++i)
            compare(i, codes + static_cast<size_t>(i + 1) * W, e - i - 1,
                    [&](size_t j) { return static_cast<uint32_t>(i + 1 + j); });
        auto flush = [&]() {
            const size_t nb = js.near_pos.size();
            if (nb == 0) return;
            for (uint32_t i = s; i < e; ++i)
                compare(i, js.near.data(), nb, [&](size_t j) { return js.near_pos[j]; });
            js.near.clear();
            js.near_pos.clear();
        };
        const uint32_t k = T.gkey[g];
        for (int d = 1; d <= rho; ++d) {
            Combos gen(T.len, static_cast<unsigned>(d));
            uint64_t mask;
            while (gen.next(mask)) {
                const uint32_t k2 = k ^ static_cast<uint32_t>(mask);
                if (k2 < k) continue;  // that pair of buckets is joined from k2's side
                ++probes;
                const uint32_t h = T.group_of(k2);
                if (h == kNoGroup) continue;
                const uint32_t hs = T.gstart[h], he = T.gstart[h + 1];
                js.near.insert(js.near.end(), codes + static_cast<size_t>(hs) * W, codes + static_cast<size_t>(he) * W);
                for (uint32_t p = hs; p < he; ++p) js.near_pos.push_back(p);
                if (js.near_pos.size() >= kGatherRows) flush();
            }
        }
        flush();
    }
}

}  // namespace

bool MihSelfJoin::step(size_t max_pairs, MihIndex& ix) {
    State& st = *st_;
    const JoinPlan& plan = st.plan;
    MihIndex::Counters total;
    pending_.a.clear();
    pending_.b.clear();
    pending_.dist.clear();
    pending_pos_ = 0;
    size_t got = 0;
    if (plan.scan) {
        // Every live row against the rows after it, blocks of rows scanned together.
        const size_t rows = ix.row_ids_.size();
        if (st.next >= rows) return false;
        const size_t b0 = st.next, b1 = std::min(rows, st.next + st.block);
        const size_t nt = thread_count(threads_, (b1 - b0 + kScanQueryBlock - 1) / kScanQueryBlock);
        std::vector<MihIndex::Scratch> scratch(nt);
        std::vector<std::vector<std::pair<int32_t, int64_t>>> per(b1 - b0);
        std::vector<size_t> qi;
        for (size_t i = 0; i < b1 - b0; ++i)
            if (!((ix.dead_[(b0 + i) / 64] >> ((b0 + i) % 64)) & 1)) qi.push_back(i);
        std::vector<const uint64_t*> qs(qi.size());
        std::vector<size_t> begins(qi.size());
        std::vector<std::vector<std::pair<int32_t, int64_t>>*> outs(qi.size());
        for (size_t j = 0; j < qi.size(); ++j) {
            qs[j] = ix.codes_.data() + (b0 + qi[j]) * ix.words_;
            begins[j] = b0 + qi[j] + 1;
            outs[j] = &per[qi[j]];
        }
        ix.radius_scan_deferred(qs.data(), begins.data(), outs.data(), qi.size(), r_, static_cast<int>(nt), scratch);
        total.queries = total.scanned = qi.size();
        for (size_t i = 0; i < per.size(); ++i) {
            std::sort(per[i].begin(), per[i].end());
            const int64_t id = ix.row_ids_[b0 + i];
            for (auto& pr : per[i]) {
                pending_.a.push_back(std::min(id, pr.second));
                pending_.b.push_back(std::max(id, pr.second));
                pending_.dist.push_back(pr.first);
            }
        }
        got = pending_.a.size();
        st.next = b1;
    } else {
        // Skip tables that join nothing (radius -1), build the next one when the previous is done.
        for (;;) {
            if (st.table >= plan.rad.size()) return false;
            if (plan.rad[st.table] < 0) {
                ++st.table;
                continue;
            }
            if (!st.built) {
                st.tab = JoinTable();
                st.tab.build(plan.masks[st.table], plan.len[st.table], ix.codes_.data(), ix.words_, ix.row_ids_.size(),
                             ix.dead_.data(), ix.row_ids_.size() - ix.n_dead_);
                st.built = true;
                st.next = 0;
            }
            if (st.next < st.tab.gkey.size()) break;
            st.tab = JoinTable();  // free this table's copy of the codes before the next one is built
            st.built = false;
            ++st.table;
        }
        const JoinTable& T = st.tab;
        const size_t g0 = st.next, g1 = std::min(T.gkey.size(), st.next + st.block);
        const size_t chunks = (g1 - g0 + kGroupGrain - 1) / kGroupGrain;
        const size_t nt = thread_count(threads_, chunks);
        // One output per chunk, concatenated in chunk order: the same pairs in the same order for any
        // number of threads.
        std::vector<std::vector<Pair>> outs(chunks);
        std::vector<uint64_t> probes(nt, 0), compares(nt, 0);
        std::vector<JoinScratch> scratch(nt);
        parallel_for(g1 - g0, nt, kGroupGrain, [&](size_t b, size_t e, size_t tid) {
            join_buckets(T, plan, st.table, r_, g0 + b, g0 + e, scratch[tid], outs[b / kGroupGrain],
                         probes[tid], compares[tid]);
        });
        for (size_t i = 0; i < nt; ++i) {
            total.probes += probes[i];
            total.candidates += compares[i];
        }
        total.queries = T.gstart[g1] - T.gstart[g0];
        for (auto& o : outs) got += o.size();
        pending_.a.reserve(got);
        pending_.b.reserve(got);
        pending_.dist.reserve(got);
        for (auto& o : outs) {
            for (const Pair& p : o) {
                const int64_t ia = ix.row_ids_[T.rows[p.a]], ib = ix.row_ids_[T.rows[p.b]];
                pending_.a.push_back(std::min(ia, ib));
                pending_.b.push_back(std::max(ia, ib));
                pending_.dist.push_back(p.d);
            }
            std::vector<Pair>().swap(o);
        }
        st.next = g1;
    }
    // Keep a step's pairs near a few chunks: dense data (many duplicates) shrinks the block.
    if (got > 4 * max_pairs)
        st.block = std::max<size_t>(1, st.block / 2);
    else if (got < max_pairs && st.block < (size_t{1} << 20))
        st.block *= 2;
    ix.record("self_join", total);
    return true;
}

bool MihSelfJoin::next(size_t max_pairs, SelfJoinChunk& out) {
    max_pairs = std::max<size_t>(max_pairs, 1);
    out.a.clear();
    out.b.clear();
    out.dist.clear();
    MihIndex& ix = *index_;
    std::shared_lock<std::shared_mutex> lk(ix.mu_);
    if (ix.version_ != version_) throw MihConcurrentModification("the index changed during self_join; start a new one");
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
        if (!step(max_pairs, ix)) break;
    }
    return !out.a.empty();
}

}  // namespace imgsim
