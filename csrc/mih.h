// Exact multi-index hashing (Norouzi, Punjani & Fleet, "Fast Search in Hamming Space with Multi-Index
// Hashing", CVPR 2012 / TPAMI 2014) over packed 64/128/256-bit codes: kNN, radius search, a streamed
// all-pairs self-join, incremental add/remove and a checksummed file format. No Python here.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "hamming.h"

namespace imgsim {

// A file that is not a valid index (truncated, foreign, corrupt). Derives from invalid_argument so
// pybind11 maps it to ValueError.
class MihFormatError : public std::invalid_argument {
   public:
    using std::invalid_argument::invalid_argument;
};

// An operating-system error while reading or writing a file; bind_mih.cpp maps it to OSError(errno).
class MihIoError : public std::runtime_error {
   public:
    MihIoError(int err, const std::string& what, std::string path)
        : std::runtime_error(what), err_(err), path_(std::move(path)) {}
    int err() const { return err_; }
    const std::string& path() const { return path_; }

   private:
    int err_;
    std::string path_;
};

// An id that is not in the index (remove); bind_mih.cpp maps it to KeyError.
class MihKeyError : public std::out_of_range {
   public:
    MihKeyError(const std::string& what, int64_t id) : std::out_of_range(what), id_(id) {}
    int64_t id() const { return id_; }

   private:
    int64_t id_;
};

// The index changed while a self-join cursor was iterating; mapped to RuntimeError like a dict that
// changed size during iteration.
class MihConcurrentModification : public std::runtime_error {
   public:
    using std::runtime_error::runtime_error;
};

struct MihStats {
    size_t words = 0;
    size_t m = 0;                          // substrings in the current tables (0: not built yet)
    bool m_auto = true;                    // m follows the size of the index (b / log2 N)
    std::vector<uint32_t> substring_bits;  // one entry per table
    size_t size = 0;                       // live codes
    size_t rows = 0;                       // stored rows, removed ones included until compaction
    size_t indexed_rows = 0;               // rows in the hash tables; later rows are scanned
    size_t memory_bytes = 0;               // codes, ids, id map and tables
    // The last query batch (knn, radius or a self-join step).
    std::string last_kind;
    uint64_t last_queries = 0;
    uint64_t last_scanned = 0;  // queries answered by the linear scan (fallback)
    uint64_t last_probes = 0;   // substring buckets looked up
    uint64_t last_candidates = 0;  // codes whose full distance was computed via the tables
};

// Which search path queries take; `automatic` compares estimated costs per query. The forced paths
// exist so tests can run both on the same data and compare.
enum class MihPath : int { automatic = 0, mih = 1, scan = 2 };

struct SelfJoinChunk {
    std::vector<int64_t> a, b;  // ids, a < b
    std::vector<int32_t> dist;
};

class MihSelfJoin;

class MihIndex {
   public:
    static constexpr uint32_t kMaxSubstringBits = 32;

    // words: 1, 2 or 4 (64, 128, 256 bits). m = 0 chooses m from the size (auto_m) at every rebuild.
    // Throws std::invalid_argument for other words or an m outside [ceil(bits / 32), bits].
    MihIndex(size_t words, size_t m);
    ~MihIndex();
    MihIndex(const MihIndex&) = delete;
    MihIndex& operator=(const MihIndex&) = delete;

    // The paper's rule m = b / log2 N, rounded, clamped so substrings hold 4..32 bits.
    static size_t auto_m(size_t bits, size_t n);

    size_t words() const { return words_; }
    size_t size() const;
    bool contains(int64_t id) const;
    std::vector<int64_t> ids() const;  // live ids, in storage order

    // Appends n codes. ids == nullptr assigns consecutive ids after the largest id ever added (from 0)
    // and returns the first; otherwise returns ids[0] (0 when n == 0).
    // A duplicate id (in the index or within the batch) throws std::invalid_argument; nothing is added.
    int64_t add(const uint64_t* codes, size_t n, const int64_t* ids);
    // Removes ids; an id not present throws MihKeyError and nothing is removed. Repeats count once.
    void remove(const int64_t* ids, size_t n);

    // k nearest live codes per query, ascending (distance, id). Rows hold kk = min(k, size()) entries.
    // Returns kk. threads <= 0 means all cores.
    size_t knn(const uint64_t* q, size_t n_q, size_t k, std::vector<int64_t>& ids, std::vector<int32_t>& dists,
               int threads);
    // Every live code within distance r of each query, CSR, sorted by (distance, id).
    RangeResult radius(const uint64_t* q, size_t n_q, uint32_t r, int threads);

    void set_path(MihPath p);
    MihPath path() const { return path_; }
    MihStats stats() const;

    // Versioned binary file: header, codes, ids, CRC-32; written to a temp file, fsynced, renamed.
    void save(const std::string& path) const;
    static std::shared_ptr<MihIndex> load(const std::string& path);

   private:
    friend class MihSelfJoin;
    struct Table;
    struct IdMap;
    struct Scratch;
    struct Counters;

    // Rebuild tables when enough rows sit outside them, compact when many rows are removed.
    void ensure_built(bool force);
    bool needs_rebuild_locked(bool force) const;
    void rebuild_locked();
    void compact_locked();

    // Estimated ns to scan `rows` rows for one query of a batch of `batch` queries scanned together.
    double scan_cost(size_t rows, size_t batch) const;
    bool radius_prefers_scan(uint32_t r, size_t scan_rows, size_t batch, double* budget) const;
    // The *_one functions answer one query through the tables and return false, or return true with
    // nothing answered when the linear scan is cheaper: the caller then scans that query together with
    // the others that chose the scan (scan_*_batch), so a batch reads the codes once per query block.
    bool radius_one(const uint64_t* q, uint32_t r, size_t min_row, size_t batch, Scratch& s, Counters& c,
                    std::vector<std::pair<int32_t, int64_t>>& out) const;
    bool knn_one(const uint64_t* q, size_t kk, size_t batch, Scratch& s, Counters& c, int64_t* ids,
                 int32_t* dists) const;
    // Linear scans of rows [begins[j], rows) (removed rows skipped) with the SIMD filter kernels.
    void scan_radius_batch(const uint64_t* const* qs, const size_t* begins, size_t nq, uint32_t r, Scratch& s,
                           std::vector<std::pair<int32_t, int64_t>>* const* outs) const;
    // heaps[j] holds query j's best kk (distance, id) so far, a max-heap; the scan adds rows [begin, rows).
    void scan_knn_batch(const uint64_t* const* qs, size_t nq, size_t kk, size_t begin, Scratch& s,
                        std::vector<std::pair<int32_t, int64_t>>* const* heaps) const;
    // Batched scans of the queries that chose the scan, in blocks over `threads` threads.
    void radius_scan_deferred(const uint64_t* const* qs, const size_t* begins,
                              std::vector<std::pair<int32_t, int64_t>>* const* outs, size_t n, uint32_t r,
                              int threads, std::vector<Scratch>& scratch) const;
    // Answers queries qi[0..n) by the batched scan into ids/dists rows (knn) on `threads` threads.
    void knn_scan_deferred(const uint64_t* q, const std::vector<size_t>& qi, size_t kk, int64_t* ids,
                           int32_t* dists, int threads, std::vector<Scratch>& scratch) const;
    void record(const char* kind, const Counters& c) const;

    size_t words_;
    size_t m_fixed_;  // 0: auto
    MihPath path_ = MihPath::automatic;

    std::vector<uint64_t> codes_;  // rows * words
    std::vector<int64_t> row_ids_;
    std::vector<uint64_t> dead_;   // bitmap over rows
    size_t n_dead_ = 0;
    std::unique_ptr<IdMap> idmap_;
    int64_t next_id_ = 0;

    std::vector<Table> tables_;
    std::vector<uint32_t> order_;  // probe order of the tables: shortest substrings first
    size_t built_rows_ = 0;
    uint64_t version_ = 0;  // bumped by every add/remove; self-join cursors check it

    mutable std::shared_mutex mu_;
    mutable std::mutex stats_mu_;
    mutable MihStats last_;
};

// Resumable all-pairs self-join: every pair of live codes within distance r exactly once, as ids
// (a < b), produced in bounded chunks. It does not use the index's query tables: a plan (mih_cost.cpp)
// picks either the batched scan of each row against the later rows, or the bucket join, which keys the
// codes on m disjoint bit sets chosen from their bit statistics, sorts them bucket-contiguous one table at
// a time, and compares whole buckets with their neighbour buckets through the SIMD filter kernel, so a
// probe is paid once per bucket instead of once per code (mih_selfjoin.cpp). Chunk order is deterministic
// for a given index and r (any thread count). Any add/remove after the cursor starts makes next() throw
// MihConcurrentModification.
class MihSelfJoin {
   public:
    MihSelfJoin(std::shared_ptr<MihIndex> index, uint32_t r, int threads);
    ~MihSelfJoin();
    MihSelfJoin(const MihSelfJoin&) = delete;
    MihSelfJoin& operator=(const MihSelfJoin&) = delete;
    // Fills `out` with at most max_pairs pairs (max_pairs >= 1); returns false once exhausted.
    // Memory stays O(max_pairs + pairs of one block of rows or buckets) beside one table's sorted copy
    // of the codes; blocks shrink when pairs are dense.
    bool next(size_t max_pairs, SelfJoinChunk& out);

   private:
    struct State;
    // Appends the pairs of the next block of rows or buckets to pending_; false when there is none.
    bool step(size_t max_pairs, MihIndex& ix);
    std::shared_ptr<MihIndex> index_;
    uint32_t r_;
    int threads_;
    uint64_t version_;
    std::unique_ptr<State> st_;
    SelfJoinChunk pending_;
    size_t pending_pos_ = 0;
};

// CRC-32 (IEEE 802.3, reflected 0xEDB88320), identical to zlib.crc32; `crc` continues a running value.
uint32_t crc32_update(uint32_t crc, const void* data, size_t n);

}  // namespace imgsim
